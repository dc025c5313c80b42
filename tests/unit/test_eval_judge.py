"""Pairwise judge: verdict parsing and position-debiased scores."""

from __future__ import annotations

import pytest

from evaluation.judge import candidate_score, judge_messages, parse_verdict


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A", "A"),
        (" b.", "B"),
        ("TIE", "TIE"),
        ("tie - both equal", "TIE"),
        ("Answer B is better", "B"),
        ("neither", None),
        ("", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_candidate_score_cancels_position():
    # Candidate is B in the first question and A in the second.
    assert candidate_score("B", "A") == 1.0  # wins both orders
    assert candidate_score("A", "B") == 0.0  # loses both
    assert candidate_score("A", "A") == 0.5  # judge always picks position A: no signal
    assert candidate_score("TIE", "A") == 0.75
    assert candidate_score(None, None) == 0.5  # unclear replies are ties


def test_judge_prompt_contains_both_answers_and_reference():
    msgs = judge_messages("list containers", "docker ps", "docker images", "docker ps")
    text = msgs[0]["content"]
    assert "Answer A:\ndocker images" in text and "Answer B:\ndocker ps" in text
    assert "Reference answer (correct):\ndocker ps" in text
