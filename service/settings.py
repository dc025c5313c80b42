"""Server settings: one pydantic-settings model, env prefix ``TUNESERVE_``.

Every field has a default and a description; ``tuneserve serve`` flags override them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.reports.schedule_config import COMPACT_FORM, EvalSchedule, parse_schedules

# vLLM accepts only these LoRA ranks for its pre-allocated LoRA buffers.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Keys that look like a template value someone forgot to change.
_PLACEHOLDER_KEYS = {"changeme", "change-me", "changethis", "secret", "password", "apikey", "xxx"}
_MIN_KEY_LENGTH = 8


def _split_keys(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Configuration of one ``tuneserve serve`` process."""

    model_config = SettingsConfigDict(env_prefix="TUNESERVE_", extra="ignore")

    base_model: str = Field(
        "gemma-3-270m", description="Registered base model name or a local checkpoint folder."
    )
    served_model_name: str | None = Field(
        None, description="Model id clients use for the base (default: the registry name)."
    )
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    adapters_dir: Path | None = Field(
        None, description="Folder scanned at start and watched for finished adapters."
    )
    watch_interval_s: float = Field(2.0, gt=0, description="Seconds between adapters_dir scans.")
    user_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys allowed to call inference.",
        repr=False,  # secrets never reach logs through a settings repr
    )
    admin_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys allowed to call inference and change adapters.",
        repr=False,
    )
    api_keys_file: Path | None = Field(
        None, description='JSON file {"user": [...], "admin": [...]} with more keys.'
    )
    max_lora_rank: int = Field(16, description=f"Largest adapter rank served; one of {VLLM_LORA_RANKS}.")
    max_loras: int = Field(4, ge=1, description="Adapters that may run in one batch.")
    max_cpu_loras: int = Field(16, ge=1, description="Adapters kept loaded in memory.")
    # Read from the environment by service/vllm_plugin inside vLLM's engine processes too;
    # declared here so a bad value stops the server at start with the field's name.
    cpu_lora_ops: Literal["grouped", "vllm"] = Field(
        "grouped", description="Multi-LoRA ops on CPU: tuneserve's grouped ops (base rows "
        "stay base) or vLLM's own (for comparison only: they leak adapters into base rows).")
    cpu_lora_compile: bool = Field(
        False, description="Keep vLLM's CPU torch.compile with LoRA enabled (grouped ops "
        "only); costs about 2 minutes at every engine start.")
    cpu_threads_bind: str | None = Field(
        None, description="CPUs vLLM's compute threads bind to on CPU (its "
        "VLLM_CPU_OMP_THREADS_BIND: 'auto', 'nobind' or a list such as '0-7'); default: every "
        "CPU on machines of up to 2 CPUs, else vLLM's 'auto' (service/cpu_threads.py).")
    max_model_len: int = Field(2048, ge=16, description="Context length (prompt + completion).")
    max_num_seqs: int | None = Field(None, description="Engine batch size (default: vLLM's).")
    kv_cache_space_gib: int = Field(2, ge=1, description="KV cache size on CPU (whole GiB).")
    dtype: str = Field("float32", description="Weights dtype; float32 on CPUs without bf16.")
    max_in_flight: int = Field(
        64, ge=1, description="Requests admitted at once; more get 429 with Retry-After."
    )
    max_upload_mb: int = Field(512, ge=1, description="Largest adapter archive accepted.")
    seed: int = Field(0, description="Engine seed (per-request `seed` overrides).")
    eval_schedules: Annotated[list[EvalSchedule], NoDecode] = Field(
        default_factory=list,
        description='Evaluations the server runs on a cron (UTC): JSON [{"cron", "suite", '
        f'"models"}}, ...] or {COMPACT_FORM}; entries separated by ";" or newlines.',
    )

    @field_validator("user_api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _split_keys(value)

    @field_validator("eval_schedules", mode="before")
    @classmethod
    def _schedules(cls, value: object) -> object:
        return parse_schedules(value)

    @field_validator("max_lora_rank")
    @classmethod
    def _rank_supported(cls, value: int) -> int:
        if value not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_LORA_RANKS}, got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})"
            )
        if self.eval_schedules and self.port == 0:
            raise ValueError("eval schedules call this server, so they need a fixed port (not 0)")
        if self.api_keys_file is not None:
            extra_user, extra_admin = load_keys_file(self.api_keys_file)
            self.user_api_keys = [*self.user_api_keys, *extra_user]
            self.admin_api_keys = [*self.admin_api_keys, *extra_admin]
        for key in [*self.user_api_keys, *self.admin_api_keys]:
            if key.lower() in _PLACEHOLDER_KEYS or len(key) < _MIN_KEY_LENGTH:
                # Never echo the key itself: it may be a real (weak) secret.
                raise ValueError(
                    f"an API key is a placeholder or shorter than {_MIN_KEY_LENGTH} characters; "
                    "generate one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`"
                )
        return self

    @property
    def auth_enabled(self) -> bool:
        """Whether any API key is configured (otherwise the server is localhost-only)."""
        return bool(self.user_api_keys or self.admin_api_keys)


def load_keys_file(path: Path) -> tuple[list[str], list[str]]:
    """(user keys, admin keys) from a JSON file ``{"user": [...], "admin": [...]}``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read API keys file {path}: {exc.__class__.__name__}") from None
    if not isinstance(raw, dict):
        raise ValueError(f'API keys file {path} must hold {{"user": [...], "admin": [...]}}')
    user, admin = raw.get("user", []), raw.get("admin", [])
    if not all(isinstance(k, str) for k in [*user, *admin]):
        raise ValueError(f"API keys file {path}: keys must be strings")
    return list(user), list(admin)
