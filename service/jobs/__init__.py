"""Fine-tuning jobs runtime: the SQLite store (files, jobs, events, checkpoints) and the
supervisor that runs each job as a ``tuneserve train`` subprocess, never in the server."""
