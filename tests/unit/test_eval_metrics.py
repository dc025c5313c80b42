"""Local `evaluate` metric modules against hand-computed values."""

from __future__ import annotations

import math

import pytest

from evaluation.scoring import load_metric, score_texts


def test_exact_match_normalises_whitespace_but_not_case_by_default():
    em = load_metric("exact_match")
    result = em.compute(
        predictions=[" docker  ps\n", "Docker PS", "docker images"],
        references=["docker ps", "docker ps", "docker ps -a"],
    )
    assert result["scores"] == [1.0, 0.0, 0.0]
    assert result["exact_match"] == pytest.approx(1 / 3)


def test_exact_match_ignore_case():
    em = load_metric("exact_match")
    result = em.compute(
        predictions=["Docker PS", "docker\tps  -a"],
        references=["docker ps", "DOCKER PS -A"],
        ignore_case=True,
    )
    assert result["scores"] == [1.0, 1.0]


def test_chrf_hand_computed():
    # hyp "ab", ref "abc". Char 1-grams: P = 2/2, R = 2/3; 2-grams: P = 1/1, R = 1/2;
    # higher orders have no hypothesis n-grams, so the effective order is 2.
    # avgP = 1, avgR = (2/3 + 1/2) / 2 = 7/12; F(beta=2) = 5 P R / (4 P + R) = 35/55.
    chrf = load_metric("chrf")
    result = chrf.compute(predictions=["ab", "abc"], references=["abc", "abc"])
    assert result["scores"][0] == pytest.approx(100 * 35 / 55)
    assert result["scores"][1] == pytest.approx(100.0)
    assert result["chrf"] == pytest.approx((100 * 35 / 55 + 100) / 2)


def test_bleu_hand_computed():
    # hyp "docker ps" (2 tokens) vs ref "docker ps -a" (3 tokens): 1- and 2-gram precision
    # are 1 and there are no longer hypothesis n-grams (effective order 2), so BLEU is the
    # brevity penalty: exp(1 - 3/2).
    bleu = load_metric("bleu")
    result = bleu.compute(predictions=["docker ps"], references=["docker ps -a"])
    assert result["scores"][0] == pytest.approx(100 * math.exp(-0.5))


def test_rouge_l_hand_computed():
    # rouge-score tokenises "docker ps -a" -> [docker, ps, a] and "docker ps --all" ->
    # [docker, ps, all]: LCS 2, P = R = 2/3, F = 2/3.
    rouge = load_metric("rouge_l")
    result = rouge.compute(
        predictions=["docker ps -a", "docker images"],
        references=["docker ps --all", "docker images"],
    )
    assert result["scores"] == pytest.approx([2 / 3, 1.0])
    assert result["rouge_l"] == pytest.approx(5 / 6)


def test_score_texts_returns_aggregate_and_per_example():
    agg, per = score_texts(["exact_match", "rouge_l"], ["a b", "c"], ["a b", "d"])
    assert agg == {"exact_match": 0.5, "rouge_l": 0.5}
    assert per["exact_match"] == [1.0, 0.0]


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(ValueError, match="no metric module 'rouge'"):
        load_metric("rouge")
