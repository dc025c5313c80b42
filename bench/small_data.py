"""Small datasets through the real job path with default settings: does `auto` learn?

Four tasks the project never trained on (git and kubectl commands, SQL, sentiment labels),
20-60 training rows each plus 20 rows that are never trained on. Each goes through a real
``tuneserve serve`` with the official ``openai`` SDK, as a user would: upload the training
file and the 20 rows as the ``validation_file``, create the job with no hyperparameters (so
``auto`` picks epochs, batch size and learning rate), wait, then ``tuneserve eval`` scores
base vs adapter on the 20 unseen rows (greedy, no stop strings: the model must end its
answer by itself), with paired-bootstrap CIs.

    flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/small_data.py --write docs/fine-tuning.md
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import bench_command, write_section  # noqa: E402

START, END = "<!-- small-data:start -->", "<!-- small-data:end -->"
EVAL_ROWS = 20


def git_rows(rng: random.Random) -> list[tuple[str, str]]:
    names = ["feature-x", "login", "hotfix-12", "docs", "release-2", "api", "ui-tweak", "db",
             "cache", "payments", "search", "auth", "v2", "perf", "cleanup", "ci"]
    files = ["README.md", "main.py", "setup.cfg", "app.js", "index.html", "Makefile"]
    templates = [
        ("Delete the branch {b}.", "git branch -d {b}"),
        ("Create a new branch called {b}.", "git branch {b}"),
        ("Switch to the branch {b}.", "git checkout {b}"),
        ("Merge {b} into the current branch.", "git merge {b}"),
        ("Push the branch {b} to origin.", "git push origin {b}"),
        ("Stage the file {f}.", "git add {f}"),
        ("Show the history of {f}.", "git log -- {f}"),
        ("Discard local changes to {f}.", "git checkout -- {f}"),
    ]
    return [(q.format(b=b, f=f), a.format(b=b, f=f))
            for q, a in templates for b in names for f in [rng.choice(files)]]


def kubectl_rows(rng: random.Random) -> list[tuple[str, str]]:
    spaces = ["web", "prod", "staging", "kube-system", "monitoring", "dev", "batch", "db"]
    names = ["api", "worker", "frontend", "redis", "nginx", "queue"]
    templates = [
        ("List the pods in namespace {n}.", "kubectl get pods -n {n}"),
        ("Show the services in namespace {n}.", "kubectl get services -n {n}"),
        ("Delete the deployment {d} in namespace {n}.", "kubectl delete deployment {d} -n {n}"),
        ("Scale the deployment {d} in {n} to 3 replicas.",
         "kubectl scale deployment {d} --replicas=3 -n {n}"),
        ("Show the logs of pod {d} in namespace {n}.", "kubectl logs {d} -n {n}"),
        ("Describe the pod {d} in namespace {n}.", "kubectl describe pod {d} -n {n}"),
    ]
    return [(q.format(n=n, d=d), a.format(n=n, d=d))
            for q, a in templates for n in spaces for d in [rng.choice(names)]]


def sql_rows(rng: random.Random) -> list[tuple[str, str]]:
    tables = ["users", "orders", "products", "invoices", "events", "sessions", "reviews",
              "payments", "accounts", "tickets"]
    columns = ["id", "name", "email", "created_at", "status", "price"]
    templates = [
        ("Count the rows of the table {t}.", "SELECT COUNT(*) FROM {t};"),
        ("Show every column of the table {t}.", "SELECT * FROM {t};"),
        ("Show the column {c} of the table {t}.", "SELECT {c} FROM {t};"),
        ("Delete every row of the table {t}.", "DELETE FROM {t};"),
        ("Show the first 10 rows of {t}.", "SELECT * FROM {t} LIMIT 10;"),
        ("Drop the table {t}.", "DROP TABLE {t};"),
        ("Show the rows of {t} sorted by {c}.", "SELECT * FROM {t} ORDER BY {c};"),
    ]
    return [(q.format(t=t, c=c), a.format(t=t, c=c))
            for q, a in templates for t in tables for c in [rng.choice(columns)]]


def sentiment_rows(rng: random.Random) -> list[tuple[str, str]]:
    good = ["loved", "enjoyed", "was delighted with", "would recommend", "was impressed by"]
    bad = ["hated", "regretted", "was disappointed by", "would avoid", "was annoyed by"]
    things = ["the room", "the breakfast", "the staff", "the pool", "the view", "the spa",
              "the location", "the dinner"]
    rows = []
    for verbs, label in ((good, "positive"), (bad, "negative")):
        for verb in verbs:
            for thing in things:
                rows.append((f"Label the sentiment of this review: I {verb} {thing}.", label))
    return rows


# task -> (row generator, training rows)
TASKS: dict[str, tuple[Callable[[random.Random], list[tuple[str, str]]], int]] = {
    "git": (git_rows, 30),
    "kubectl": (kubectl_rows, 20),
    "sql": (sql_rows, 40),
    "sentiment": (sentiment_rows, 60),
}


def split_task(name: str, seed: int) -> tuple[list[dict], list[dict]]:
    generate, n_train = TASKS[name]
    rng = random.Random(seed)
    pairs = sorted(set(generate(rng)))
    rng.shuffle(pairs)
    if len(pairs) < n_train + EVAL_ROWS:
        raise SystemExit(f"{name}: only {len(pairs)} distinct rows")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs]
    return rows[:n_train], rows[n_train:n_train + EVAL_ROWS]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def run_job(sdk, base: str, name: str, work: Path, seed: int) -> dict:
    train, held = split_task(name, seed)
    (work / f"{name}-train.jsonl").write_text(jsonl(train))
    (work / f"{name}-eval.jsonl").write_text(jsonl(held))
    train_file = sdk.files.create(file=(f"{name}-train.jsonl", jsonl(train).encode()),
                                  purpose="fine-tune")
    eval_file = sdk.files.create(file=(f"{name}-eval.jsonl", jsonl(held).encode()),
                                 purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model=base, training_file=train_file.id,
                                      validation_file=eval_file.id, suffix=name, seed=seed)
    return {"task": name, "job": job.id, "train_rows": len(train)}


def wait_all(sdk, runs: list[dict], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for run in runs:
        while True:
            job = sdk.fine_tuning.jobs.retrieve(run["job"])
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{run['task']}: job still {job.status}")
            time.sleep(2)
        if job.status != "succeeded":
            raise SystemExit(f"{run['task']}: job {job.status}: {job.error}")
        hp = job.hyperparameters
        manifest = sdk.get(f"/adapters/{job.fine_tuned_model}", cast_to=object)["manifest"]
        run.update(model=job.fine_tuned_model, n_epochs=hp.n_epochs, batch_size=hp.batch_size,
                   lr_multiplier=hp.learning_rate_multiplier, steps=manifest["steps"])
        print("trained:", json.dumps(run), flush=True)


def evaluate(run: dict, server: str, work: Path) -> None:
    from evaluation.runner import RunOptions, run_suite
    from evaluation.suite import load_suite

    suite_file = work / f"{run['task']}.yaml"
    suite_file.write_text(
        f"name: small-{run['task']}\n"
        f"dataset: {{path: {run['task']}-eval.jsonl, type: chat, val_set_size: 0.5}}\n"
        "generation: {max_tokens: 48, temperature: 0.0}\n"
        "metrics: [exact_match, chrf]\nperplexity: false\nconcurrency: 20\n"
    )
    record = run_suite(load_suite(str(suite_file)), f"base,adapter={run['model']}",
                       RunOptions(server=server))
    if record["dataset"]["held_out_rows"] != EVAL_ROWS:
        raise SystemExit(f"{run['task']}: scored {record['dataset']['held_out_rows']} rows")
    for label in ("base", "adapter"):
        outputs = [ex["outputs"][label] for ex in record["examples"]]
        run[f"{label}_em"] = record["metrics"][label]["exact_match"]
        run[f"{label}_chrf"] = record["metrics"][label]["chrf"]
        run[f"{label}_stops"] = sum(o["finish_reason"] == "stop" for o in outputs) / len(outputs)
    comp = record["comparisons"]["adapter"]["exact_match"]
    run["em_ci"] = (comp["low"], comp["high"])
    print("scored:", json.dumps(run), flush=True)


def markdown(runs: list[dict], command: str) -> str:
    lines = [
        START, "",
        f"Default job settings (`auto`), {EVAL_ROWS} unseen rows per task scored greedily with "
        "no stop strings (the model must end its answer itself), base vs adapter, exact "
        f"match with its 95% paired-bootstrap CI. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        "2-core CPU.", "",
        f"    {command}", "",
        "| task | train rows | auto: epochs / batch / lr × | steps | base EM | adapter EM "
        "| Δ EM 95% CI | base chrF | adapter chrF | adapter stops by itself |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['task']} | {r['train_rows']} | {r['n_epochs']} / {r['batch_size']} / "
            f"{r['lr_multiplier']:g} | {r['steps']} | {r['base_em']:.2f} | "
            f"{r['adapter_em']:.2f} | [{r['em_ci'][0]:+.2f}, {r['em_ci'][1]:+.2f}] | "
            f"{r['base_chrf']:.1f} | {r['adapter_chrf']:.1f} | {r['adapter_stops']:.0%} |")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help="update this Markdown file's section")
    args = parser.parse_args(argv)

    import openai

    from tests.integration.jobs_server import JobsServer
    from training.base_models import resolve_model_path

    with tempfile.TemporaryDirectory(prefix="small-data-") as tmp:
        work = Path(tmp)
        server = JobsServer(model=resolve_model_path(args.model), home=work / "home",
                            env={"TUNESERVE_UI": "0"})
        (work / "home").mkdir()
        server.start()
        try:
            sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
            base = sdk.models.list().data[0].id
            runs = [run_job(sdk, base, name, work, args.seed) for name in args.tasks]
            wait_all(sdk, runs, timeout_s=3600)
            for run in runs:
                evaluate(run, f"{server.base_url}/v1", work)
        finally:
            server.stop()
    command = bench_command("small_data.py", argv)
    section = markdown(runs, command)
    print(section)
    if args.write:
        write_section(args.write, section, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
