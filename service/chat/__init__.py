"""chat API resource."""
