"""The OpenAI Fine-tuning API (``/v1/fine_tuning/jobs``) on the job store and supervisor."""
