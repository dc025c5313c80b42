"""Sentence-level BLEU (sacrebleu, exponential smoothing), as a local `evaluate` module.

``bleu`` is the mean of per-example sentence BLEU (0..100; smoothing keeps short commands
from scoring 0 for a missing 4-gram); ``corpus_bleu`` is sacrebleu's corpus BLEU.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_DESCRIPTION = "BLEU via sacrebleu (13a tokenisation, exp smoothing for sentence scores)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str.
    references: list of str (one reference per prediction).
Returns:
    bleu: mean sentence BLEU in [0, 100].
    corpus_bleu: sacrebleu corpus BLEU in [0, 100].
    scores: per-example sentence BLEU.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, A Call for Clarity in Reporting BLEU Scores, 2018",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        sentence = BLEU(effective_order=True)
        scores = [
            sentence.sentence_score(p, [r]).score
            for p, r in zip(predictions, references, strict=True)
        ]
        corpus = BLEU().corpus_score(list(predictions), [list(references)]).score if scores else 0.0
        return {
            "bleu": sum(scores) / len(scores) if scores else 0.0,
            "corpus_bleu": corpus,
            "scores": scores,
        }
