"""Sentence-level chrF (sacrebleu, character 6-grams, beta 2), as a local `evaluate` module.

``chrf`` is the mean of the per-example sentence scores (0..100), so it is the same
statistic the paired bootstrap resamples; ``corpus_chrf`` is sacrebleu's corpus score.
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

_DESCRIPTION = "Character n-gram F-score (chrF, sacrebleu defaults: char order 6, beta 2)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str.
    references: list of str (one reference per prediction).
    word_order: int, default 0 (chrF); 2 gives chrF++.
Returns:
    chrf: mean sentence chrF in [0, 100].
    corpus_chrf: sacrebleu corpus chrF in [0, 100].
    scores: per-example sentence chrF.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Popović, chrF: character n-gram F-score for automatic MT evaluation, 2015",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, word_order: int = 0):
        metric = CHRF(word_order=word_order)
        scores = [
            metric.sentence_score(p, [r]).score
            for p, r in zip(predictions, references, strict=True)
        ]
        corpus = metric.corpus_score(list(predictions), [list(references)]).score if scores else 0.0
        return {
            "chrf": sum(scores) / len(scores) if scores else 0.0,
            "corpus_chrf": corpus,
            "scores": scores,
        }
