"""Two real ``tuneserve serve`` replicas (tiny model, real vLLM) on one real PostgreSQL and
one shared folder: an adapter uploaded to replica 1 answers on replica 2 after its sync,
and its removal on replica 1 makes it a 404 on replica 2. The same convergence on fake
engines, both backends, is tests/unit/test_adapter_replicas.py."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import openai
import pytest

from tests.integration.replicas_support import serve_replicas
from tests.unit.service_lora import make_lora_adapter

pytestmark = pytest.mark.slow

CONVERGE_S = 10.0  # the bound; the replicas sync every 0.5 s


@pytest.fixture(scope="module")
def replicas(tiny_model_dir, postgres_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("replicas-adapters")
    with serve_replicas(2, tiny_model_dir, "tiny-gemma", workdir,
                        database_url=postgres_server.create_database(),
                        shared_dir=workdir / "shared") as servers:
        yield servers


def _archive(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(folder, arcname="adapter")
    return buffer.getvalue()


def _until(check, what: str):
    """Poll ``check`` until it returns a value (not None) or CONVERGE_S passes."""
    deadline = time.monotonic() + CONVERGE_S
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"replica 2: {what} within {CONVERGE_S}s")
        time.sleep(0.2)


def test_an_adapter_uploaded_to_one_replica_serves_and_leaves_the_other(replicas, tmp_path,
                                                                        tiny_model_dir):
    one, two = replicas
    adapter = make_lora_adapter(Path(tiny_model_dir), tmp_path / "adapter")
    with one.http(admin=True) as client:
        response = client.post("/v1/adapters", data={"name": "uploaded"},
                               files={"file": ("adapter.tar.gz", _archive(adapter))})
    assert response.status_code == 201, response.text
    client_two = two.openai(max_retries=0)

    def answered():
        try:
            return client_two.chat.completions.create(
                model="uploaded", max_tokens=4, temperature=0,
                messages=[{"role": "user", "content": "list containers"}])
        except openai.NotFoundError:
            return None

    completion = _until(answered, "the uploaded adapter answers")
    assert completion.model == "uploaded" and completion.choices[0].message.content
    assert "uploaded" in {m.id for m in client_two.models.list().data}

    with one.http(admin=True) as client:
        assert client.delete("/v1/adapters/uploaded").status_code == 200

    def gone():
        try:
            client_two.chat.completions.create(
                model="uploaded", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
        except openai.NotFoundError as exc:
            return exc
        return None

    assert _until(gone, "the removed adapter is a 404").status_code == 404
