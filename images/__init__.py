"""The image builder (placeholder docstring, replaced below)."""
