"""Exact match after a documented normalisation, as a local `evaluate` module.

Normalisation (applied to prediction and reference alike):
1. strip leading/trailing whitespace,
2. collapse every run of whitespace (spaces, tabs, newlines) into one space,
3. lower-case both sides only when ``ignore_case=True`` (default False: ``docker ps -A``
   and ``docker ps -a`` are different commands).

Returns the mean score (0..1) and the per-example scores (1.0 or 0.0) so callers can
compute paired confidence intervals.
"""

import re

import datasets
import evaluate

_DESCRIPTION = (
    "Exact string match after stripping and collapsing whitespace (optionally case-folded)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str.
    references: list of str.
    ignore_case: bool, default False.
Returns:
    exact_match: mean of per-example scores in [0, 1].
    scores: list of per-example scores (1.0 or 0.0).
Examples:
    >>> em = evaluate.load("evaluation/metrics/exact_match")
    >>> em.compute(predictions=[" docker  ps "], references=["docker ps"])["exact_match"]
    1.0
"""
_WHITESPACE = re.compile(r"\s+")


def normalise(text: str, ignore_case: bool = False) -> str:
    """The normalisation documented above."""
    text = _WHITESPACE.sub(" ", text.strip())
    return text.lower() if ignore_case else text


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, ignore_case: bool = False):
        scores = [
            float(normalise(p, ignore_case) == normalise(r, ignore_case))
            for p, r in zip(predictions, references, strict=True)
        ]
        return {"exact_match": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
