"""Run history in SQLite and the regression rule."""

from __future__ import annotations

from evaluation.history import History, check_against_previous, find_regressions


def _record(suite: str, metrics: dict) -> dict:
    return {
        "suite": suite,
        "started_at": "2026-01-01T00:00:00+00:00",
        "models": [{"label": k} for k in metrics],
        "metrics": metrics,
    }


def test_find_regressions_respects_margin_and_direction():
    prev = {"docker": {"exact_match": 0.50, "chrf": 70.0, "nll": 1.0}}
    margins = {"exact_match": 0.02, "chrf": 2.0, "nll": 0.1}
    # Within margins (and an improvement on nll): no regression.
    same = {"docker": {"exact_match": 0.49, "chrf": 68.5, "nll": 0.5}}
    assert find_regressions(prev, same, margins) == []
    worse = {"docker": {"exact_match": 0.40, "chrf": 69.0, "nll": 1.3}}
    found = find_regressions(prev, worse, margins)
    assert {(r.model, r.metric) for r in found} == {("docker", "exact_match"), ("docker", "nll")}
    assert "0.5 -> 0.4" in found[0].describe()


def test_models_only_in_one_run_are_not_compared():
    assert find_regressions({"a": {"chrf": 90.0}}, {"b": {"chrf": 10.0}}, {"chrf": 1.0}) == []


def test_history_stores_runs_and_finds_previous(isolated_home):
    history = History()
    assert history.path.parent == isolated_home
    assert history.previous("docker-commands") is None
    first = history.add(_record("docker-commands", {"d": {"chrf": 80.0}}), None, False)
    history.add(_record("hotel", {"d": {"chrf": 10.0}}), None, False)
    prev = history.previous("docker-commands")
    assert prev.id == first and prev.metrics == {"d": {"chrf": 80.0}}
    assert [r.suite for r in history.runs()] == ["hotel", "docker-commands"]

    record = _record("docker-commands", {"d": {"chrf": 60.0}})
    reg = check_against_previous(history, record, {"chrf": 2.0})
    assert reg["previous_run_id"] == first
    assert reg["regressions"][0]["metric"] == "chrf"
    history.add(record, None, True)
    assert History().runs("docker-commands")[0].regressed is True
