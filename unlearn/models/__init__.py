"""Model specs: every model-family-specific detail lives behind `ModelSpec`."""
