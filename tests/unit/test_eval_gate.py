"""The promotion gate's rules and the metric plan, on scored records built by the real
``summarise`` (so comparisons and CIs are the ones a run produces)."""

from __future__ import annotations

import pytest

from evaluation.gate import decide, plan_for_references
from evaluation.runner import summarise


def _record(answers: dict[str, list[str]], references: list[str]) -> dict:
    """A collected run: every model answered every reference (base first)."""
    return summarise({
        "suite_config": {"metrics": ["exact_match", "chrf"], "ignore_case": False},
        "models": [{"label": label, "model_id": label} for label in answers],
        "examples": [
            {"reference": ref,
             "outputs": {label: {"text": texts[i]} for label, texts in answers.items()}}
            for i, ref in enumerate(references)
        ],
    })


REFS = [f"docker rm c{i}" for i in range(20)]
WRONG = ["ls"] * 20


def test_short_answers_plan_exact_match_and_chrf():
    plan = plan_for_references(["docker ps -a", "docker images"])
    assert (plan.kind, plan.primary, plan.metrics, plan.judge) == (
        "short", "exact_match", ["exact_match", "chrf"], False)
    assert 32 <= plan.max_tokens < 64


def test_long_answers_plan_rouge_and_the_judge():
    long = " ".join(["word"] * 40)
    plan = plan_for_references([long, "Dear guest,\nthank you for staying with us."])
    assert (plan.kind, plan.primary, plan.judge) == ("long", "rouge_l", True)
    assert "chrf" in plan.metrics and plan.max_tokens > 32
    with pytest.raises(ValueError):
        plan_for_references([])


def test_candidate_that_beats_the_base_is_promoted():
    record = _record({"base": WRONG, "candidate": REFS}, REFS)
    decision = decide(record, candidate="candidate", metric="exact_match", margin=0.02)
    assert decision.promote and decision.beats_base and decision.vs_current is None
    assert decision.vs_base["low"] > 0
    assert "beats the base" in decision.summary()


def test_no_measured_win_is_not_promoted():
    # 1 right of 20 vs 0: a positive mean whose CI includes 0.
    lucky = WRONG[:19] + [REFS[19]]
    decision = decide(_record({"base": WRONG, "candidate": lucky}, REFS),
                      candidate="candidate", metric="exact_match", margin=0.02)
    assert decision.vs_base["delta"] > 0 and decision.vs_base["low"] <= 0
    assert not decision.promote and not decision.beats_base
    assert "no measured win" in decision.summary()


def test_regression_against_the_current_target_blocks_promotion():
    half = REFS[:10] + WRONG[10:]
    record = _record({"base": WRONG, "candidate": half, "current": REFS}, REFS)
    decision = decide(record, candidate="candidate", metric="exact_match", margin=0.02,
                      current="current")
    assert decision.beats_base and decision.regresses and not decision.promote
    assert decision.vs_current["delta"] == pytest.approx(-0.5)
    assert "regresses" in decision.summary()


def test_within_margin_of_the_current_target_is_promoted():
    # 19 of 20 against 20 of 20: 0.05 worse, allowed with a margin of 0.1, not of 0.02.
    almost = REFS[:19] + WRONG[19:]
    record = _record({"base": WRONG, "candidate": almost, "current": REFS}, REFS)
    kept = decide(record, candidate="candidate", metric="exact_match", margin=0.1,
                  current="current")
    assert kept.promote and not kept.regresses
    strict = decide(record, candidate="candidate", metric="exact_match", margin=0.02,
                    current="current")
    assert not strict.promote and strict.regresses


def test_gate_refuses_unknown_metrics_and_labels():
    record = _record({"base": WRONG, "candidate": REFS}, REFS)
    with pytest.raises(ValueError, match="not measured"):
        decide(record, candidate="candidate", metric="rouge_l", margin=0.02)
    with pytest.raises(ValueError, match="not in the run"):
        decide(record, candidate="candidate", metric="exact_match", margin=0.02,
               current="missing")
    with pytest.raises(ValueError, match="no better direction"):
        decide(record, candidate="candidate", metric="output_tokens", margin=0.02)
