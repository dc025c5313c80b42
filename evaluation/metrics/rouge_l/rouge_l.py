"""ROUGE-L F-measure (rouge-score), as a local `evaluate` module.

The hub's ``evaluate.load("rouge")`` needs the network; this one is loaded by path.
Tokenisation is rouge-score's default (lower-case, non-alphanumerics split), no stemming
unless ``use_stemmer=True``.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-L F1 (longest common subsequence of tokens), via rouge-score."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str.
    references: list of str.
    use_stemmer: bool, default False.
Returns:
    rouge_l: mean per-example ROUGE-L F1 in [0, 1].
    scores: per-example ROUGE-L F1.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_stemmer: bool = False):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = [
            scorer.score(r, p)["rougeL"].fmeasure
            for p, r in zip(predictions, references, strict=True)
        ]
        return {"rouge_l": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
