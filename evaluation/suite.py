"""Evaluation suites: one YAML file per task, loaded into one pydantic model.

A suite names the dataset (read with the same loaders as training, held-out split only),
how prompts are sent, generation parameters, metrics, an optional LLM judge and the
regression margins. Suites register by name (built-ins in ``evaluation/suites/``); a path
to a YAML file works anywhere a name does.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuneserve.errors import UserError
from tuneserve.yaml_file import load_yaml_mapping

SUITES_DIR = Path(__file__).with_name("suites")

# Metrics a suite may ask for. Text metrics are local `evaluate` modules; the rest are
# measured by the runner. Direction: +1 higher is better, -1 lower is better, 0 neutral.
METRIC_DIRECTIONS: dict[str, int] = {
    "exact_match": 1,
    "chrf": 1,
    "bleu": 1,
    "rouge_l": 1,
    "nll": -1,
    "perplexity": -1,
    "output_tokens": 0,
    "latency_s": -1,
    "tokens_per_s": 1,
    "judge_win_rate": 1,
}
TEXT_METRICS = ("exact_match", "chrf", "bleu", "rouge_l")


class EvalDatasetSpec(BaseModel):
    """Which rows a suite scores: a dataset file and its held-out split (not a training
    source like training.config.DatasetSpec, hence its own name)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(
        description="Dataset file; relative paths resolve against the suite file's folder; "
        "$VARS are expanded."
    )
    type: str | None = Field(None, description="Loader type (training.data); auto when None.")
    val_set_size: float = Field(
        0.1,
        gt=0,
        description="Held-out share (<1) or count (>=1) when no adapter manifest says otherwise.",
    )
    seed: int = Field(42, description="Split seed when no adapter manifest says otherwise.")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N held-out rows.")


class GenerationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(64, gt=0, description="Completion token limit per answer.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy, reproducible.")
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, description="Extra stop strings.")
    seed: int | None = Field(0, description="Sampling seed sent to the server.")


class JudgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="Judge model id on the judge server ('base' = the base).")
    server: str | None = Field(None, description="Judge server URL; default: the eval server.")
    api_key: str | None = Field(None, description="Judge API key; default: the eval key.")
    max_examples: int = Field(50, gt=0, description="Judge at most this many examples.")


class RegressionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    margins: dict[str, float] = Field(
        default_factory=lambda: {"exact_match": 0.02, "chrf": 2.0},
        description="metric -> allowed drop against the previous run of this suite "
        "(in the metric's own units) before the run counts as a regression.",
    )

    @field_validator("margins")
    @classmethod
    def _known(cls, margins: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(margins) - set(METRIC_DIRECTIONS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRIC_DIRECTIONS)}")
        if any(m < 0 for m in margins.values()):
            raise ValueError("margins must be >= 0")
        return margins


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Suite id; history compares runs with the same name.")
    description: str = ""
    dataset: EvalDatasetSpec
    system_prompt: str | None = Field(None, description="Prepended as a system message.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    metrics: list[str] = Field(
        default_factory=lambda: ["exact_match", "chrf", "bleu", "rouge_l"],
        description="Text metrics to compute (latency, tokens/s, output length always are).",
    )
    ignore_case: bool = Field(False, description="Case-fold for exact match.")
    perplexity: bool = Field(
        True,
        description="Mean NLL / perplexity of the reference answer via prompt logprobs "
        "(needs a vLLM-style /v1/completions with `prompt_logprobs` and the tokenizer).",
    )
    tokenizer: str | None = Field(
        None,
        description="Base model name or folder whose chat template formats the NLL prompts; "
        "default: the adapter manifest's base_model.",
    )
    judge: JudgeSpec | None = None
    concurrency: int = Field(32, gt=0, description="Requests in flight per model.")
    regression: RegressionSpec = Field(default_factory=RegressionSpec)
    source: Path | None = Field(None, exclude=True, description="Where the suite was read from.")

    @field_validator("metrics")
    @classmethod
    def _text_metrics(cls, metrics: list[str]) -> list[str]:
        unknown = sorted(set(metrics) - set(TEXT_METRICS))
        if unknown:
            raise ValueError(f"unknown text metric(s) {unknown}; known: {list(TEXT_METRICS)}")
        return metrics

    def dataset_path(self) -> Path:
        """The dataset file, resolved against the suite's folder."""
        path = Path(os.path.expandvars(self.dataset.path)).expanduser()
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path.resolve()


def builtin_suites() -> dict[str, Path]:
    """Shipped suites by name (file stem)."""
    return {p.stem: p for p in sorted(SUITES_DIR.glob("*.yaml"))}


def load_suite(name_or_path: str, overrides: dict | None = None) -> Suite:
    """A suite by built-in name or YAML path; ``overrides`` (nested dict) wins over the file.

    Raises UserError naming the problem (unknown suite, bad YAML, bad field).
    """
    path = Path(name_or_path)
    if not path.is_file():
        suites = builtin_suites()
        if name_or_path not in suites:
            raise UserError(
                f"unknown suite {name_or_path!r}: not a file and not one of {sorted(suites)}"
            )
        path = suites[name_or_path]
    raw = load_yaml_mapping(path, "suite")
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    try:
        suite = Suite(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path}: {where}: {first['msg']}") from None
    suite.source = path.resolve()
    return suite
