"""Prometheus metrics of the API layer (per served model, adapters included).

vLLM's own engine metrics (``vllm:*``) register in the same default registry, so
``/metrics`` exposes both; vLLM's carry only the base model name, ours carry the model
(base or adapter) each request asked for.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)

REQUESTS = Counter(
    "tuneserve_requests", "Inference requests by model, endpoint and HTTP status.",
    ["model", "endpoint", "status"],
)
IN_FLIGHT = Gauge("tuneserve_requests_in_flight",
                  "Inference sequences running now (a request counts n x prompts).", ["model"])
TTFT = Histogram(
    "tuneserve_time_to_first_token_seconds", "Time from request to first token.", ["model"],
    buckets=_LATENCY_BUCKETS,
)
E2E = Histogram(
    "tuneserve_e2e_request_latency_seconds", "Time from request to last token.", ["model"],
    buckets=_LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("tuneserve_prompt_tokens", "Prompt tokens processed.", ["model"])
COMPLETION_TOKENS = Counter(
    "tuneserve_completion_tokens", "Completion tokens generated.", ["model"]
)
ADAPTERS_LOADED = Gauge("tuneserve_adapters_loaded", "Adapters served now.")
ADAPTER_OPS = Counter(
    "tuneserve_adapter_operations", "Adapter loads/unloads by result.", ["operation", "result"]
)
ADAPTER_OP_SECONDS = Histogram(
    "tuneserve_adapter_operation_seconds", "Time to load/unload an adapter.", ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ALIAS_TARGET = Gauge(
    "tuneserve_alias_target", "1 for the adapter each alias serves now.", ["alias", "adapter"]
)
LORA_OPS = Info(
    "tuneserve_lora_ops", "Which multi-LoRA ops the engine runs (tuneserve-grouped or vllm)."
)
