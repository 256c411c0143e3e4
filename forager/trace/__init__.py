"""Python execution traces in CWM's format: the in-image tracer, collection, models and export."""
