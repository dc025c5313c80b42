"""The promotion gate: is a candidate adapter good enough to serve under a stable name?

Two rules, both on the suite's primary metric of one evaluation run, in which the base
(the baseline, first model), the candidate and, when the alias already points somewhere,
the current target all answered the same held-out rows:

1. **Beats the base**: the 95% paired-bootstrap CI of (candidate - base) lies wholly on the
   good side of 0 (a measured win, not a lucky mean).
2. **No regression**: against the current target, the candidate's mean may be worse by at
   most the suite's margin for that metric (the same rule as the history's regression check).

``plan_for_references`` picks metrics that fit the data: exact match (primary) and chrF for
short one-line answers; ROUGE-L (primary), chrF and the judge for longer ones.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluation.bootstrap import paired_bootstrap
from evaluation.suite import METRIC_DIRECTIONS

# A reference of at most this many words on one line counts as a short answer.
SHORT_ANSWER_WORDS = 20


@dataclass(frozen=True)
class EvalPlan:
    """Which metrics a held-out set is scored with, and how long answers may be."""

    metrics: list[str]
    primary: str
    margin: float
    max_tokens: int
    judge: bool
    kind: str  # "short" or "long"


def plan_for_references(references: list[str]) -> EvalPlan:
    """Metrics that fit the answers: short answers are right or wrong (exact match), long
    ones overlap (ROUGE-L) and need a judge."""
    if not references:
        raise ValueError("no reference answers to plan an evaluation for")
    words = [len(r.split()) for r in references]
    one_line = all("\n" not in r.strip() for r in references)
    # ~4 characters a token for English text; twice the longest answer leaves room to show
    # whether the model stops by itself.
    max_tokens = min(512, max(32, 2 * max(len(r) for r in references) // 4 + 8))
    if one_line and statistics.median(words) <= SHORT_ANSWER_WORDS:
        return EvalPlan(["exact_match", "chrf"], "exact_match", 0.02, max_tokens, False, "short")
    return EvalPlan(["rouge_l", "chrf"], "rouge_l", 0.02, max_tokens, True, "long")


@dataclass
class GateDecision:
    """The verdict with its evidence; ``promote`` is True only when every rule passed."""

    promote: bool
    metric: str
    beats_base: bool
    vs_base: dict[str, Any]
    vs_current: dict[str, Any] | None = None
    regresses: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return "; ".join(self.reasons)


def _scores(record: dict[str, Any], label: str, metric: str) -> list[float | None]:
    return [ex["scores"][label].get(metric) for ex in record["examples"]]


def decide(
    record: dict[str, Any],
    *,
    candidate: str,
    metric: str,
    margin: float,
    current: str | None = None,
) -> GateDecision:
    """Apply the two rules to a scored run (``evaluation.runner.summarise`` output).

    ``candidate`` and ``current`` are model labels in the run; the run's first model is the
    base. Raises ValueError when the metric or a label is missing from the run.
    """
    direction = METRIC_DIRECTIONS.get(metric, 0)
    if direction == 0:
        raise ValueError(f"{metric!r} has no better direction; it cannot gate a promotion")
    labels = [m["label"] for m in record["models"]]
    for label in (candidate, current):
        if label is not None and label not in labels:
            raise ValueError(f"model {label!r} is not in the run (models: {labels})")
    if metric not in (record.get("comparisons") or {}).get(candidate, {}):
        raise ValueError(f"metric {metric!r} was not measured for {candidate!r}")

    vs_base = record["comparisons"][candidate][metric]
    good_side = vs_base["low"] > 0 if direction > 0 else vs_base["high"] < 0
    reasons = [
        f"{metric} vs base {vs_base['delta']:+.3f} (95% CI {vs_base['low']:+.3f} to "
        f"{vs_base['high']:+.3f}): "
        + ("beats the base" if good_side else "no measured win over the base (CI includes 0 "
           "or is on the wrong side)")
    ]
    decision = GateDecision(promote=good_side, metric=metric, beats_base=good_side,
                            vs_base=vs_base, reasons=reasons)
    if current is not None:
        delta = paired_bootstrap(_scores(record, current, metric),
                                 _scores(record, candidate, metric)).to_dict()
        worse_by = -direction * delta["delta"]
        decision.vs_current = delta
        decision.regresses = worse_by > margin
        reasons.append(
            f"{metric} vs current target {delta['delta']:+.3f} (95% CI {delta['low']:+.3f} to "
            f"{delta['high']:+.3f}, allowed drop {margin:g}): "
            + ("regresses" if decision.regresses else "no regression")
        )
        decision.promote = decision.promote and not decision.regresses
    return decision
