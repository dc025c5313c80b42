"""The runner and `tuneserve eval` CLI end to end against a small fake OpenAI-compatible
server (pure unit test of our client side; the real-server test is in
tests/integration/test_eval_docker.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request

from evaluation.cli import EXIT_REGRESSION
from evaluation.history import History
from tuneserve.cli import main
from tuneserve.errors import UserError

ROWS = [
    {
        "instruction": "translate",
        "input": f"list container number {i}",
        "output": f"docker ps -f id={i}",
    }
    for i in range(30)
]


class FakeServer:
    """/v1/models, /v1/chat/completions, /v1/completions (with prompt_logprobs).

    ``good`` answers with the reference, ``base-m`` with ``ls``; the judge (any model asked
    with the judge prompt) prefers the answer equal to the reference.
    """

    def __init__(self) -> None:
        self.answers = {f"translate\n\n{r['input']}": r["output"] for r in ROWS}
        self.in_flight = 0
        self.max_in_flight = 0
        self.nll_requests = 0
        self.judge_requests = 0
        self.models = ["base-m", "good"]
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {
                "object": "list",
                "data": [
                    {
                        "id": m,
                        "object": "model",
                        "created": 0,
                        "owned_by": "t",
                        "parent": None if m == "base-m" else "base-m",
                    }
                    for m in self.models
                ],
            }

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            await asyncio.sleep(0.01)
            self.in_flight -= 1
            content = body["messages"][-1]["content"]
            if content.startswith("You compare two answers"):
                self.judge_requests += 1
                ref = content.split("Reference answer (correct):\n")[1].split("\n\n")[0]
                a = content.split("Answer A:\n")[1].split("\n\n")[0]
                text = "A" if a == ref else "B"
            elif body["model"] == "good":
                text = self.answers[content]
            else:
                text = "ls"
            return {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": len(text.split()),
                    "total_tokens": 5 + len(text.split()),
                },
            }

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            self.nll_requests += 1
            ids = body["prompt"]
            lp = -0.1 if body["model"] == "good" else -2.0
            entries = [None] + [{str(t): {"logprob": lp, "rank": 1}} for t in ids[1:]]
            return {
                "id": "c",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "text": "x", "finish_reason": "length", "prompt_logprobs": entries}
                ],
                "usage": {
                    "prompt_tokens": len(ids),
                    "completion_tokens": 1,
                    "total_tokens": len(ids) + 1,
                },
            }

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def fake_server():
    with FakeServer() as server:
        yield server


@pytest.fixture
def suite_file(tmp_path: Path, tiny_model_dir: Path) -> Path:
    data = tmp_path / "data.json"
    data.write_text(json.dumps(ROWS))
    suite = tmp_path / "mini.yaml"
    suite.write_text(
        f"name: mini\ndataset: {{path: {data.name}, type: alpaca, val_set_size: 20, seed: 1}}\n"
        f"tokenizer: {tiny_model_dir}\nconcurrency: 8\n"
        "judge: {model: base, max_examples: 6}\n"
        "regression: {margins: {exact_match: 0.05, chrf: 2.0}}\n"
    )
    return suite


def test_eval_run_scores_reports_and_stores(fake_server, suite_file, isolated_home, capsys):
    code = main(
        ["eval", "run", str(suite_file), "--models", "base,good", "--server", fake_server.url]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "HELPS: good beats base" in out
    # Requests went out concurrently (bounded by the suite's concurrency of 8).
    assert 1 < fake_server.max_in_flight <= 8
    assert fake_server.nll_requests == 40  # 20 examples x 2 models
    assert fake_server.judge_requests == 12  # 6 examples x both orders
    report_dir = next((isolated_home / "reports").iterdir())
    record = json.loads((report_dir / "report.json").read_text())
    assert record["dataset"]["held_out_rows"] == 20 and record["dataset"]["split_source"] == "suite"
    good, base = record["metrics"]["good"], record["metrics"]["base"]
    assert good["exact_match"] == 1.0 and base["exact_match"] == 0.0
    assert good["nll"] == pytest.approx(0.1) and base["nll"] == pytest.approx(2.0)
    assert good["judge_win_rate"] == 1.0
    assert record["comparisons"]["good"]["chrf"]["excludes_zero"]
    assert [m["model_id"] for m in record["models"]] == ["base-m", "good"]
    assert len(History().runs("mini")) == 1


def test_regression_against_previous_run_exits_non_zero(
    fake_server, suite_file, isolated_home, capsys
):
    assert (
        main(
            [
                "eval",
                "run",
                str(suite_file),
                "--models",
                "base,good",
                "--server",
                fake_server.url,
                "--no-judge",
            ]
        )
        == 0
    )
    # Same label, now served by a worse model: a regression.
    code = main(
        [
            "eval",
            "run",
            str(suite_file),
            "--models",
            "base,good=base-m",
            "--server",
            fake_server.url,
            "--no-judge",
        ]
    )
    out = capsys.readouterr().out
    assert code == EXIT_REGRESSION
    assert "REGRESSION: good: exact_match 1 -> 0" in out
    runs = History().runs("mini")
    assert runs[0].regressed and not runs[1].regressed
    page = Path(runs[0].report_dir, "report.html").read_text()
    assert "id='regression'" in page
    assert main(["eval", "history", "--suite", "mini"]) == 0
    hist = capsys.readouterr().out
    assert "REGRESSION" in hist and "exact_match=0 ↓" in hist


def test_user_errors_are_one_line_exit_2(fake_server, suite_file, isolated_home, capsys):
    assert (
        main(["eval", "run", str(suite_file), "--models", "base,nope", "--server", fake_server.url])
        == 2
    )
    assert "model 'nope' is not served" in capsys.readouterr().err
    assert (
        main(["eval", "run", str(suite_file), "--models", "base", "--server", fake_server.url]) == 2
    )
    assert main(["eval", "run", "no-such-suite", "--models", "base,good"]) == 2
    assert (
        main(
            [
                "eval",
                "run",
                str(suite_file),
                "--models",
                "base,good",
                "--server",
                "http://127.0.0.1:9/v1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "cannot list models at http://127.0.0.1:9/v1" in err and "Traceback" not in err
    assert (
        main(["eval", "schedule", str(suite_file), "--models", "base,good", "--cron", "soon"]) == 2
    )


def test_adapter_manifest_held_out_rows_are_used(
    fake_server, suite_file, tmp_path, isolated_home, capsys
):
    from training.data import file_sha256

    adapter = tmp_path / "good-adapter"
    adapter.mkdir()
    data = suite_file.parent / "data.json"
    held = [ROWS[3], ROWS[7], ROWS[11]]
    (adapter / "held_out.jsonl").write_text(
        "\n".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"translate\n\n{r['input']}"},
                        {"role": "assistant", "content": r["output"]},
                    ]
                }
            )
            for r in held
        )
    )
    (adapter / "tuneserve.json").write_text(
        json.dumps(
            {
                "base_model": "x",
                "datasets": [{"path": str(data), "sha256": file_sha256(data), "rows": 30}],
                "split": {"seed": 5, "val_set_size": 3},
            }
        )
    )
    code = main(
        [
            "eval",
            "run",
            str(suite_file),
            "--models",
            "base,good",
            "--server",
            fake_server.url,
            "--adapter-dir",
            f"good={adapter}",
            "--no-judge",
            "--no-history",
        ]
    )
    assert code == 0
    record = json.loads(next((isolated_home / "reports").glob("*/report.json")).read_text())
    assert record["dataset"]["split_source"] == "manifest:good (held_out.jsonl)"
    assert [e["reference"] for e in record["examples"]] == [r["output"] for r in held]
    assert record["models"][1]["manifest_hash"]


def _alpaca_row(row: dict) -> dict:
    return {"messages": [{"role": "user", "content": f"translate\n\n{row['input']}"},
                         {"role": "assistant", "content": row["output"]}]}


def test_adapter_trained_on_every_row_is_refused(suite_file, isolated_home):
    from evaluation.dataset import held_out_examples
    from evaluation.suite import load_suite
    from training.data import file_sha256

    data = suite_file.parent / "data.json"
    manifest = {
        "datasets": [{"path": str(data), "sha256": file_sha256(data)}],
        "split": {"seed": 42, "val_set_size": 0, "held_out_rows": 0},
    }
    suite = load_suite(str(suite_file))
    with pytest.raises(UserError, match=r"contaminated evaluation.*20 of 20 for good"):
        held_out_examples(suite, {"good": (manifest, None)})
    held = held_out_examples(suite, {"good": (manifest, None)}, contamination="allow")
    assert len(held.examples) == 20 and "contamination allowed" in held.notes[0]


@pytest.fixture
def adapter_trained_on_some_rows(tmp_path):
    """An adapter folder whose train_rows.sha256 lists ROWS[0:10] (trained elsewhere)."""
    from training.manifest import write_adapter_files

    adapter = tmp_path / "partly"
    adapter.mkdir()
    trained = [_alpaca_row(r) for r in ROWS[:10]]
    write_adapter_files(adapter, lambda _: None, {"base_model": "x", "datasets": []}, [],
                        trained)
    return adapter


def test_overlap_with_recorded_training_rows_is_counted(
    suite_file, adapter_trained_on_some_rows, isolated_home
):
    from evaluation.dataset import held_out_examples
    from evaluation.suite import load_suite
    from training.manifest import read_manifest

    suite = load_suite(str(suite_file))
    adapters = {"partly": (read_manifest(adapter_trained_on_some_rows),
                           adapter_trained_on_some_rows)}
    clean = held_out_examples(suite, {}, contamination="refuse")
    overlap = sum(1 for ex in clean.examples if ex.reference in
                  {r["output"] for r in ROWS[:10]})
    assert 0 < overlap < len(clean.examples)  # the suite split (seed 1) holds some of them
    with pytest.raises(UserError, match=rf"{overlap} of 20 for partly"):
        held_out_examples(suite, adapters)
    kept = held_out_examples(suite, adapters, contamination="exclude")
    assert len(kept.examples) == 20 - overlap
    assert not {ex.reference for ex in kept.examples} & {r["output"] for r in ROWS[:10]}
    assert f"{overlap} rows dropped" in kept.notes[-1]


def test_contaminated_eval_run_is_one_line_exit_2(
    fake_server, suite_file, adapter_trained_on_some_rows, isolated_home, capsys
):
    args = ["eval", "run", str(suite_file), "--models", "base,good", "--server",
            fake_server.url, "--adapter-dir", f"good={adapter_trained_on_some_rows}",
            "--no-judge", "--no-history", "--no-perplexity"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "contaminated evaluation" in err and "--allow-contamination" in err
    assert len(err.splitlines()) == 1 and not list((isolated_home / "reports").glob("*"))
    assert main([*args, "--exclude-trained-rows"]) == 0


def test_validation_file_rows_are_scored_and_not_counted_as_trained(suite_file, tmp_path):
    """A job given a validation_file: that file's rows (saved as held_out.jsonl) are the
    scored set, and listing it in the manifest does not make it 'trained on'."""
    from evaluation.dataset import held_out_examples
    from evaluation.suite import load_suite
    from training.data import file_sha256
    from training.manifest import write_adapter_files

    data = suite_file.parent / "data.json"  # the suite's file is the job's validation file
    adapter = tmp_path / "job"
    adapter.mkdir()
    manifest = {"datasets": [{"path": "train.jsonl", "sha256": "0" * 64, "rows": 10},
                             {"path": str(data), "sha256": file_sha256(data), "rows": 30,
                              "role": "validation"}],
                "split": {"seed": 0, "val_set_size": 0.0}}
    write_adapter_files(adapter, lambda _: None, manifest,
                        [_alpaca_row(r) for r in ROWS], [_alpaca_row({"input": "x", "output": "y"})])
    held = held_out_examples(load_suite(str(suite_file)), {"job": (manifest, adapter)})
    assert held.split_source == "manifest:job (held_out.jsonl)" and len(held.examples) == 30
    assert not held.notes
    (adapter / "train_rows.sha256").unlink()  # no fingerprints: the manifest rule decides
    assert len(held_out_examples(load_suite(str(suite_file)), {"job": (manifest, adapter)})
               .examples) == 30


def test_schedule_cli_runs_max_runs_through_the_shared_loop(suite_file, monkeypatch):
    # `eval schedule` drives EvalScheduler (the service's loop); each fire is one
    # `eval run` in a worker thread; the exit code is the worst run's.
    from datetime import timedelta

    from evaluation import cli, scheduler

    codes = iter([0, 1])
    monkeypatch.setattr(cli, "_run_once", lambda args: next(codes))
    monkeypatch.setattr(scheduler, "seconds_until_next",
                        lambda expr, now, last=None: (now + timedelta(seconds=1), 0.0))
    assert main(["eval", "schedule", str(suite_file), "--models", "base,good",
                 "--cron", "* * * * *", "--max-runs", "2"]) == 1
    assert next(codes, None) is None  # both runs made, no third
