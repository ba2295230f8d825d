"""Model loading and the inference engine every stage uses."""
