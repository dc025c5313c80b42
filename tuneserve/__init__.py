"""tuneserve: fine-tune, serve and evaluate LoRA adapters of small language models."""

__version__ = "0.1.0"
