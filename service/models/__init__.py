"""models API resource."""
