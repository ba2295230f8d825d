"""sftscope: measure and control what supervised fine-tuning does to a model's factual knowledge."""

__version__ = "0.1.0"
