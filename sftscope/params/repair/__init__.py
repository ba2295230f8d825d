"""Repair methods: ways to move a fine-tuned model's weights back toward its base, one module
each (registered in :data:`sftscope.registry.REPAIR_METHODS`), applied in place to the loaded
fine-tuned model tensor by tensor and undone exactly (:mod:`.base`)."""
