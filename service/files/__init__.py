"""The OpenAI Files API (``/v1/files``), for fine-tuning datasets."""
