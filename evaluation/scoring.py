"""Text metrics through the local `evaluate` modules in ``evaluation/metrics/``.

Loaded by path (``evaluate.load("<repo>/evaluation/metrics/<name>")``) so nothing is
fetched from a hub at run time. Every module returns per-example ``scores`` next to its
aggregate, which the paired bootstrap needs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

METRICS_DIR = Path(__file__).with_name("metrics")


@cache
def load_metric(name: str):
    """The `evaluate` module for metric ``name`` (cached per process)."""
    import evaluate

    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        known = sorted(p.name for p in METRICS_DIR.iterdir() if p.is_dir())
        raise ValueError(f"no metric module {name!r} in {METRICS_DIR} (known: {known})")
    return evaluate.load(str(path))


def score_texts(
    metric_names: list[str],
    predictions: list[str],
    references: list[str],
    *,
    ignore_case: bool = False,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Aggregate and per-example scores for each metric name."""
    aggregate: dict[str, float] = {}
    per_example: dict[str, list[float]] = {}
    for name in metric_names:
        kwargs = {"ignore_case": ignore_case} if name == "exact_match" else {}
        result = load_metric(name).compute(predictions=predictions, references=references, **kwargs)
        aggregate[name] = float(result[name])
        per_example[name] = [float(s) for s in result["scores"]]
    return aggregate, per_example
