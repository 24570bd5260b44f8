"""The measurement core that works on any transformers model."""
