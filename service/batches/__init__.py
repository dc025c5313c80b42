"""The OpenAI Batch API: ``/v1/batches`` over an uploaded JSONL of requests."""
