"""Server settings: one pydantic-settings model, env prefix ``TUNESERVE_``.

Every field has a default and a description; ``tuneserve serve`` flags override them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
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


class ProjectLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


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
    sync_interval_s: float = Field(
        2.0, gt=0, description="Seconds between reconciling the served adapters and aliases "
        "with the registry database (other replicas' changes show up within this)."
    )
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
    metrics_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated scrape-only keys: they may read /metrics and nothing "
        "else (an admin key may read it too).",
        repr=False,
    )
    api_keys_file: Path | None = Field(
        None, description='JSON file with more keys: {"user": [...], "admin": [...], '
        '"metrics": [...]} (project "default"), and/or {"keys": [{"key", "project", "role"}], '
        '"projects": {name: {"requests_per_minute", "tokens_per_minute"}}}; role is user, '
        'admin or metrics (scrape-only).'
    )
    # Filled from the keys file: which project each key belongs to (keys of the plain
    # lists and of the environment belong to "default"), and per-project limits.
    key_projects: dict[str, str] = Field(default_factory=dict, repr=False, exclude=True)
    project_limits: dict[str, ProjectLimits] = Field(default_factory=dict)
    job_creators: Literal["user", "admin"] = Field(
        "user", description="Who may create fine-tuning jobs: any key ('user') or admin keys "
        "only ('admin'). A succeeded job's adapter is served at once, so 'admin' keeps what "
        "is served an admin decision.")
    rate_limit_requests_per_minute: int | None = Field(
        None, ge=1, description="Inference requests per minute per project (those without "
        "their own limit in the keys file); default: no limit.")
    rate_limit_tokens_per_minute: int | None = Field(
        None, ge=1, description="Inference tokens (prompt + completion) per minute per "
        "project (those without their own limit); default: no limit.")
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
        64, ge=1, description="Sequences admitted at once (a request counts n x prompts); "
        "more get 429 with Retry-After."
    )
    batch_concurrency: int = Field(
        4, ge=1, description="Requests of a /v1/batches batch run at once (behind online "
        "requests, which the engine schedules first).")
    max_upload_mb: int = Field(512, ge=1, description="Largest adapter archive accepted.")
    seed: int = Field(0, description="Engine seed (per-request `seed` overrides).")
    eval_schedules: Annotated[list[EvalSchedule], NoDecode] = Field(
        default_factory=list,
        description='Evaluations the server runs on a cron (UTC): JSON [{"cron", "suite", '
        f'"models"}}, ...] or {COMPACT_FORM}; entries separated by ";" or newlines.',
    )

    @field_validator("user_api_keys", "admin_api_keys", "metrics_api_keys", mode="before")
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
            keys = load_keys_file(self.api_keys_file)
            self.user_api_keys = [*self.user_api_keys, *keys.user]
            self.admin_api_keys = [*self.admin_api_keys, *keys.admin]
            self.metrics_api_keys = [*self.metrics_api_keys, *keys.metrics]
            self.key_projects = {**self.key_projects, **keys.projects_of_keys}
            self.project_limits = {**self.project_limits, **keys.project_limits}
        from service.tenancy import schedule_eval_key

        for entry in self.eval_schedules:  # refused now, not at the first fire
            schedule_eval_key(self, entry.project)
        for key in [*self.user_api_keys, *self.admin_api_keys, *self.metrics_api_keys]:
            if key.lower() in _PLACEHOLDER_KEYS or len(key) < _MIN_KEY_LENGTH:
                # Never echo the key itself: it may be a real (weak) secret.
                raise ValueError(
                    f"an API key is a placeholder or shorter than {_MIN_KEY_LENGTH} characters; "
                    "generate one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`"
                )
        return self

    def limits_for(self, project: str) -> tuple[int | None, int | None]:
        """(requests, tokens) per minute for ``project``; None: no limit."""
        own = self.project_limits.get(project)
        if own is not None:
            return own.requests_per_minute, own.tokens_per_minute
        return self.rate_limit_requests_per_minute, self.rate_limit_tokens_per_minute

    @property
    def auth_enabled(self) -> bool:
        """Whether any API key is configured (otherwise the server is localhost-only)."""
        return bool(self.user_api_keys or self.admin_api_keys or self.metrics_api_keys)


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    project: str = Field("default", min_length=1, max_length=64, pattern=r"^[\w.-]+$")
    # metrics: a scrape-only key (GET /metrics and nothing else; its project is unused).
    role: Literal["user", "admin", "metrics"] = "user"


class KeysFile(BaseModel):
    """The API keys file. ``user``/``admin``/``metrics``: plain lists (project "default");
    ``keys``: entries with their project and role; ``projects``: per-project rate limits."""

    model_config = ConfigDict(extra="forbid")
    user: list[str] = Field(default_factory=list)
    admin: list[str] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=list)
    keys: list[_KeyEntry] = Field(default_factory=list)
    projects: dict[str, ProjectLimits] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _entries_into_lists(self) -> KeysFile:
        for entry in self.keys:
            {"admin": self.admin, "metrics": self.metrics, "user": self.user}[
                entry.role].append(entry.key)
        return self

    @property
    def projects_of_keys(self) -> dict[str, str]:
        return {entry.key: entry.project for entry in self.keys}

    @property
    def project_limits(self) -> dict[str, ProjectLimits]:
        return dict(self.projects)


def load_keys_file(path: Path) -> KeysFile:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read API keys file {path}: {exc.__class__.__name__}") from None
    try:
        return KeysFile.model_validate(raw)
    except ValidationError as exc:
        # Never echo the input: it holds secrets. Name the place and the problem only.
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the top level"
        raise ValueError(f"API keys file {path}: {where}: {first['msg']}") from None
