"""adapters API resource."""
