"""health API resource."""
