"""The serving side of tuneserve: an OpenAI-compatible FastAPI app around vLLM's async
engine that serves one base model plus any number of hot-loaded LoRA adapters."""
