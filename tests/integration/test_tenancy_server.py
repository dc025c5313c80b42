"""Acceptance of projects on a real server (``tuneserve serve``, vLLM engine, tiny model,
a real ``tuneserve train`` worker), driven by the official openai SDK: two projects A and B
from a keys file. A's file, job, batch and the job's adapter are invisible to B (list,
retrieve and chat with the model id give 404); B cannot cancel A's job; an admin sees both.
A report naming A's adapter is A's and the admin's only; ``/metrics`` needs an admin or
the scrape-only metrics key. Then schemathesis with a key of each role (admin, A, B), B's
requests carrying A's real ids: no 5xx, no cross-project leak, A's objects intact.
The fast versions of every rule are in tests/unit/test_tenancy.py."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from tests.integration.conftest import start_server, stop_server

pytestmark = pytest.mark.slow
KEYS = {"a": "tenancy-a-key-0123456789", "b": "tenancy-b-key-0123456789",
        "metrics": "tenancy-scrape-key-0123456789"}
ROWS = "".join(json.dumps({"messages": [
    {"role": "user", "content": f"stop container web-{i}"},
    {"role": "assistant", "content": f"docker stop web-{i}"}]}) + "\n"
    for i in range(16)).encode()
CHAT = {"messages": [{"role": "user", "content": "list containers"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tenancy-server")
    keys_file = workdir / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"key": KEYS["a"], "project": "a"},
                                              {"key": KEYS["b"], "project": "b"},
                                              {"key": KEYS["metrics"], "role": "metrics"}]}))
    # No post-training evaluation: this module is about who sees what, not the gate.
    live = start_server(Path(tiny_model_dir), "tiny-gemma", workdir,
                        env={"TUNESERVE_API_KEYS_FILE": str(keys_file),
                             "TUNESERVE_JOBS_EVALUATE_ON_SUCCESS": "0",
                             "TUNESERVE_JOBS_POLL_INTERVAL_S": "0.2"})
    yield live
    stop_server(live)


def _sdk(server, who: str) -> openai.OpenAI:
    key = server.admin_key if who == "admin" else KEYS[who]
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0,
                         timeout=120)


def _wait(poll, done, timeout: float):
    deadline = time.monotonic() + timeout
    while not done(value := poll()):
        assert time.monotonic() < deadline, value
        time.sleep(0.5)
    return value


def _train(sdk: openai.OpenAI, base: str, training_file: str):
    hp = {"n_epochs": 1, "batch_size": 4, "max_steps": 2, "lora_rank": 8}
    return sdk.fine_tuning.jobs.create(model=base, training_file=training_file,
                                       method={"type": "supervised",
                                               "supervised": {"hyperparameters": hp}})


def test_project_a_objects_are_invisible_to_project_b(server):
    a, b, admin = _sdk(server, "a"), _sdk(server, "b"), _sdk(server, "admin")
    base = a.models.list().data[0].id
    upload = a.files.create(file=("train.jsonl", ROWS), purpose="fine-tune")
    job = _train(a, base, upload.id)
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.cancel(job.id)
    batch_input = json.dumps({"custom_id": "r0", "method": "POST",
                              "url": "/v1/chat/completions",
                              "body": {"model": base, **CHAT}}).encode() + b"\n"
    batch = a.batches.create(
        input_file_id=a.files.create(file=("in.jsonl", batch_input), purpose="batch").id,
        endpoint="/v1/chat/completions", completion_window="24h")
    done = _wait(lambda: a.fine_tuning.jobs.retrieve(job.id),
                 lambda j: j.status in ("succeeded", "failed", "cancelled"), 300)
    assert done.status == "succeeded", (done.error, server.log_tail())  # B's cancel did nothing
    model = done.fine_tuned_model
    assert a.chat.completions.create(model=model, **CHAT).choices[0].message is not None

    # B: lists are empty of A's objects, and each id is 404 as if absent.
    assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []
    assert b.batches.list().data == []
    assert model not in {m.id for m in b.models.list().data}
    for call in (lambda: b.files.retrieve(upload.id),
                 lambda: b.files.content(upload.id),
                 lambda: b.fine_tuning.jobs.retrieve(job.id),
                 lambda: b.batches.retrieve(batch.id),
                 lambda: b.models.retrieve(model),
                 lambda: b.chat.completions.create(model=model, **CHAT)):
        with pytest.raises(openai.NotFoundError):
            call()

    # The admin sees both projects' objects; B's own upload is B's.
    b_upload = b.files.create(file=("b.jsonl", ROWS), purpose="fine-tune")
    assert {upload.id, b_upload.id} <= {f.id for f in admin.files.list().data}
    assert admin.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == model
    assert admin.batches.retrieve(batch.id).id == batch.id
    assert model in {m.id for m in admin.models.list().data}
    assert [f.id for f in b.files.list().data] == [b_upload.id]


def _a_private_model(server) -> str:
    """A's job's adapter (private to A): the one the test above trained, else a new one."""
    a = _sdk(server, "a")
    done = [j for j in a.fine_tuning.jobs.list().data if j.status == "succeeded"]
    if not done:
        upload = a.files.create(file=("train.jsonl", ROWS), purpose="fine-tune")
        job = _train(a, a.models.list().data[0].id, upload.id)
        done = [_wait(lambda: a.fine_tuning.jobs.retrieve(job.id),
                      lambda j: j.status in ("succeeded", "failed", "cancelled"), 300)]
        assert done[0].status == "succeeded", (done[0].error, server.log_tail())
    return done[0].fine_tuned_model


def test_reports_and_metrics_are_not_another_projects(server):
    """/reports shows a report only to a project that may use every model it names (here
    a report as ``tuneserve eval run --output-dir $TUNESERVE_HOME/reports`` leaves it);
    /metrics answers only an admin or the scrape-only metrics key, which reads nothing else."""
    model = _a_private_model(server)
    base = _sdk(server, "a").models.list().data[0].id
    for report_id, models in (("private-of-a", [base, model]), ("of-the-base", [base])):
        folder = server.home / "reports" / report_id
        folder.mkdir(parents=True)
        (folder / "report.html").write_text(f"<html>{' vs '.join(models)}</html>")
        (folder / "report.json").write_text(json.dumps(
            {"suite": "tenancy", "models": [{"label": m, "model_id": m} for m in models]}))

    def get(who: str, path: str) -> httpx.Response:
        key = server.admin_key if who == "admin" else KEYS[who]
        return httpx.get(f"{server.base_url}{path}", headers={"Authorization": f"Bearer {key}"},
                         timeout=30)

    def listed(who: str) -> set[str]:
        return {r["id"] for r in get(who, "/reports").json()["data"]}

    assert {"private-of-a", "of-the-base"} <= listed("a")
    assert {"private-of-a", "of-the-base"} <= listed("admin")
    assert "of-the-base" in listed("b") and "private-of-a" not in listed("b")
    assert model not in get("b", "/reports").text
    for path in ("/reports/private-of-a/report.json", "/reports/private-of-a/report.html"):
        hidden = get("b", path)
        assert hidden.status_code == 404 and model not in hidden.text
        assert get("a", path).status_code == 200

    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30)
    assert metrics.status_code == 401 and metrics.json()["error"]["type"]
    assert get("a", "/metrics").status_code == 403
    for who in ("metrics", "admin"):
        scraped = get(who, "/metrics")
        assert scraped.status_code == 200 and "tuneserve_requests_total" in scraped.text
    assert get("metrics", "/v1/models").status_code == 403
    assert get("metrics", "/reports").status_code == 403


# --- Fuzzing with a key of each role -------------------------------------------------------
# Schemathesis (positive cases) over every operation of the server's own OpenAPI schema,
# once per role: the admin key, A's user key and B's user key. A's real ids (files, job,
# checkpoints, batch, the job's private adapter) are put into B's path parameters and
# reference fields, so B really probes A's objects; each such request is sent again with
# an absent id of the same shape, and both answers must be alike (404 on a path; 403 only
# where the route is admin-only, which it answers before looking anything up).
FUZZ_SEED = 20261203
FUZZ_EXAMPLES = 6  # per (operation, role): ~40 operations x 3 roles, about a minute on 2 cores
# Request fields that name an object (besides every path parameter).
REFERENCE_FIELDS = {"model", "model_id", "training_file", "validation_file", "input_file_id",
                    "file_id", "job_id", "batch_id", "lora_name", "after"}


@dataclass
class ProjectA:
    files: list[str]
    job: str
    checkpoints: list[str]
    batch: str
    model: str
    base: str  # not A's: the model a body names when another field carries A's id

    @property
    def ids(self) -> list[str]:
        return [*self.files, self.job, *self.checkpoints, self.batch, self.model]

    def for_field(self, name: str) -> list[str]:
        """A's ids that fit a parameter or field called ``name`` (every id when unknown)."""
        name = name.lower()
        for kind, ids in (("file", self.files), ("job", [self.job]), ("batch", [self.batch]),
                          ("model", [self.model]), ("name", [self.model])):
            if kind in name:
                return ids
        return self.ids


def _absent(value: str) -> str:
    """An id of the same shape that names nothing."""
    return value[:-1] + ("1" if value[-1] == "0" else "0")


def _seed_project_a(server) -> ProjectA:
    """Real objects of project A through the SDK: a file, a trained job (its adapter is
    A's private model), a completed batch."""
    a = _sdk(server, "a")
    base = server.model_id
    upload = a.files.create(file=("train.jsonl", ROWS), purpose="fine-tune")
    hp = {"n_epochs": 1, "batch_size": 4, "max_steps": 2, "lora_rank": 8}
    job = a.fine_tuning.jobs.create(model=base, training_file=upload.id,
                                    method={"type": "supervised",
                                            "supervised": {"hyperparameters": hp}})
    batch_input = json.dumps({"custom_id": "r0", "method": "POST",
                              "url": "/v1/chat/completions",
                              "body": {"model": base, **CHAT}}).encode() + b"\n"
    batch_file = a.files.create(file=("in.jsonl", batch_input), purpose="batch")
    batch = a.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    done = _wait(lambda: a.fine_tuning.jobs.retrieve(job.id),
                 lambda j: j.status in ("succeeded", "failed", "cancelled"), 300)
    assert done.status == "succeeded", (done.error, server.log_tail())
    batch = _wait(lambda: a.batches.retrieve(batch.id),
                  lambda b: b.status in ("completed", "failed", "expired", "cancelled"), 120)
    assert batch.status == "completed" and batch.output_file_id, batch
    checkpoints = [c.id for c in a.fine_tuning.jobs.checkpoints.list(job.id).data]
    return ProjectA([upload.id, batch_file.id, batch.output_file_id], job.id, checkpoints,
                    batch.id, done.fine_tuned_model, base)


def _references(case, a: ProjectA, example: int, *, paths_only: bool) -> list[tuple]:
    """Where A's ids go in ``case``: (container, key, value), cycling through the ids
    that fit each place from one example to the next."""
    places = [(case.path_parameters, name) for name in case.path_parameters]
    body_fields: list[str] = []
    if not paths_only:
        places += [(case.query, name) for name in case.query if name in REFERENCE_FIELDS]
        if isinstance(case.body, dict) and (case.media_type or "").endswith("json"):
            body_fields = [name for name in case.body if name in REFERENCE_FIELDS]
            places += [(case.body, name) for name in body_fields]
    refs = [(box, name, (ids := a.for_field(name))[example % len(ids)])
            for box, name in places]
    if "model" in body_fields and len(body_fields) > 1:
        # A job on the base from A's file: the file is what must be refused, not the model.
        refs = [(box, name, a.base if box is case.body and name == "model" else value)
                for box, name, value in refs]
    return refs


def _sent(case) -> str:
    return repr((case.path_parameters, case.query, case.body))


def _role_fuzz(server, operation, role: str, a: ProjectA, stats: dict):
    key = {"admin": server.admin_key, "a": KEYS["a"], "b": KEYS["b"]}[role]
    # The n-th distinct case (a replay while Hypothesis reports gets the same ids).
    examples: dict[str, int] = {}

    @seed(FUZZ_SEED)
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def check(case):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {key}"}
        example = examples.setdefault(_sent(case), len(examples))
        # Every other example addresses A's objects; the admin's run is the plain fuzz
        # (it may delete what it addresses), A addresses its own only to read them.
        refs = []
        if example % 2 == 0 and (role == "b" or (role == "a" and case.method == "GET")):
            refs = _references(case, a, example // 2, paths_only=role == "a")
        for box, name, value in refs:
            box[name] = value
        response = case.call(base_url=server.base_url, timeout=120)
        stats["requests"] += 1
        case.validate_response(response, checks=[not_a_server_error])
        if role == "a" and refs and not case.query and case.path_parameters:
            # A reads its own objects (routes whose parameter names one of them).
            if any(kind in case.path for kind in ("{file_id}", "{job_id}", "{batch_id}",
                                                  "{model_id}", "/v1/adapters/{name}")):
                assert response.status_code == 200, (case.path, response.text[:300])
                stats["a_reads"] += 1
        if role != "b":
            return
        seen = response.text + repr(response.headers)
        leaked = [i for i in a.ids if i in seen and i not in _sent(case)]
        assert not leaked, f"{case.method} {case.formatted_path}: B sees {leaked}"
        if not refs:
            return
        for box, name, value in refs:
            box[name] = _absent(value) if value in a.ids else value
        twin = case.call(base_url=server.base_url, timeout=120)
        assert response.status_code == twin.status_code, (
            f"{case.method} {case.path}: A's id -> {response.status_code}, an absent id -> "
            f"{twin.status_code}: {response.text[:300]}")
        if case.path_parameters:
            assert response.status_code in (403, 404), (case.path, response.text[:300])
        stats["b_404"] += response.status_code == 404
        stats["b_probed"].add(f"{case.method} {case.path} {response.status_code}")

    return check


def test_fuzz_with_a_key_of_each_role_no_5xx_no_cross_project_leak(server):
    a = _seed_project_a(server)
    raw = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    operations = [result.ok() for result in schemathesis.openapi.from_dict(raw)
                  .get_all_operations()]
    operations = [op for op in operations if not op.path.startswith("/ui")]
    assert len(operations) >= 15, [op.label for op in operations]
    stats = {"requests": 0, "a_reads": 0, "b_404": 0, "b_probed": set()}
    failures: list[str] = []
    for role in ("admin", "a", "b"):
        for operation in operations:
            try:
                _role_fuzz(server, operation, role, a, stats)()
            except Exception as exc:  # collect every operation's failure, then report
                failures.append(f"{operation.label} [{role}]: {str(exc)[:1500]}")
    print(f"role fuzz: {stats}")  # what was covered, shown with -s
    assert not failures, f"{len(failures)} failing (sent {stats}):\n" + "\n\n".join(failures)
    # The probes were real: B addressed A's objects on many routes, A read its own.
    assert stats["b_404"] >= 10 and stats["a_reads"] >= 5, stats

    # B's deletes and cancels left A's objects as they were.
    sdk = _sdk(server, "a")
    assert sdk.files.content(a.files[0]).read() == ROWS
    for file_id in a.files:
        assert sdk.files.retrieve(file_id).id == file_id
    job = sdk.fine_tuning.jobs.retrieve(a.job)
    assert (job.status, job.fine_tuned_model) == ("succeeded", a.model)
    assert sdk.batches.retrieve(a.batch).status == "completed"
    assert a.model in {m.id for m in sdk.models.list().data}
    assert sdk.chat.completions.create(model=a.model, **CHAT).choices[0].message is not None
    assert a.model not in {m.id for m in _sdk(server, "b").models.list().data}
