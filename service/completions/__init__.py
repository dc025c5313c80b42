"""completions API resource."""
