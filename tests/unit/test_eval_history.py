"""Run history (on both storage backends) and the regression rule."""

from __future__ import annotations

import sqlite3

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


def test_history_stores_runs_and_finds_previous(isolated_home, database_url):
    history = History()
    assert history.url == database_url  # TUNESERVE_DATABASE_URL, set by the fixture
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


def test_history_defaults_to_the_embedded_file_under_home(isolated_home, monkeypatch):
    monkeypatch.delenv("TUNESERVE_DATABASE_URL", raising=False)
    history = History()
    assert history.path == (isolated_home / "eval_history.sqlite").resolve()
    history.add(_record("s", {"d": {"chrf": 1.0}}), isolated_home / "r1", False)
    assert History().runs("s")[0].report_dir == str(isolated_home / "r1")


# The schema evaluation/history.py created before the storage layer (runs table).
_LEGACY_SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, suite TEXT NOT NULL, started_at TEXT NOT NULL,
    models TEXT NOT NULL, metrics TEXT NOT NULL, report_dir TEXT,
    regressed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_suite ON runs (suite, id);
INSERT INTO runs VALUES (1, 'docker-commands', '2026-01-01T00:00:00+00:00',
    '[{"label": "d"}]', '{"d": {"chrf": 80.0, "exact_match": 0.5}}', '/reports/1', 0);
INSERT INTO runs VALUES (2, 'docker-commands', '2026-01-02T00:00:00+00:00',
    '[{"label": "d"}]', '{"d": {"chrf": 60.0}}', NULL, 1);
"""


def test_a_history_file_from_before_the_storage_layer_is_adopted(tmp_path):
    path = tmp_path / "eval_history.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_LEGACY_SCHEMA)
    history = History(path)
    old = history.runs("docker-commands")
    assert [(r.id, r.regressed, r.report_dir) for r in old] == [(2, True, None), (1, False, "/reports/1")]
    assert old[1].metrics == {"d": {"chrf": 80.0, "exact_match": 0.5}}
    assert old[1].models == [{"label": "d"}]
    # New runs continue the ids and are compared with the adopted ones.
    record = _record("docker-commands", {"d": {"chrf": 50.0}})
    assert check_against_previous(history, record, {"chrf": 2.0})["previous_run_id"] == 2
    assert history.add(record, None, True) == 3
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "runs" not in tables and "eval_runs" in tables


def test_the_cli_refuses_an_unsupported_database_url_in_one_line(isolated_home, monkeypatch, capsys):
    from tuneserve.cli import main

    monkeypatch.setenv("TUNESERVE_DATABASE_URL", "mysql://db/tuneserve")
    assert main(["eval", "history"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: TUNESERVE_DATABASE_URL: unsupported database 'mysql'")
    assert "\n" not in err


def test_the_cli_lists_runs_from_the_configured_database(isolated_home, database_url, capsys):
    from tuneserve.cli import main

    History().add(_record("docker-commands", {"d": {"chrf": 80.0}}), None, False)
    assert main(["eval", "history", "--suite", "docker-commands"]) == 0
    assert "docker-commands" in capsys.readouterr().out
