"""`tuneserve eval` finds every served adapter's manifest through the server's registry
(``GET /v1/adapters/{id}``): the serving app on a fake engine, the runner's real client."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import AsyncOpenAI

from evaluation.runner import RunOptions, resolve_models
from service.app import build_app
from service.settings import Settings
from tests.unit.service_lora import make_lora_adapter
from tests.unit.test_service_api import ADMIN_KEY, USER_KEY, _factory, _wait_ready
from training.manifest import write_adapter_files

TRAINED = [{"messages": [{"role": "user", "content": "list containers"},
                         {"role": "assistant", "content": "docker ps"}]}]


@pytest.fixture
def served(tiny_model_dir, isolated_home, tmp_path, monkeypatch):
    """A server with one registered adapter that recorded its manifest and training rows."""
    monkeypatch.setenv("TUNESERVE_UI", "0")
    adapter = make_lora_adapter(tiny_model_dir, tmp_path / "job-adapter")
    write_adapter_files(adapter, lambda _: None, {"base_model": "tiny", "job": "ftjob-1"}, [],
                        TRAINED)
    settings = Settings(base_model=str(tiny_model_dir), served_model_name="tiny",
                        user_api_keys=USER_KEY, admin_api_keys=ADMIN_KEY)
    with TestClient(build_app(settings, _factory({}))) as client:
        _wait_ready(client)
        response = client.post("/v1/adapters", json={"name": "ft:tiny:x:ftjob-1",
                                                     "path": str(adapter)},
                               headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 201, response.text
        yield client, adapter


def _resolve(client: TestClient, model_id: str = "ft:tiny:x:ftjob-1"):
    async def run():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            sdk = AsyncOpenAI(base_url="http://testserver/v1", api_key=USER_KEY,
                              http_client=http)
            return await resolve_models(sdk, [("base", "base"), ("job", model_id)],
                                        RunOptions(server="http://testserver/v1"))

    return asyncio.run(run())


def test_served_adapter_manifest_and_folder_come_from_the_registry(served):
    client, adapter = served
    base, job = _resolve(client)
    assert base.model_id == "tiny" and base.manifest is None and base.adapter_path is None
    assert job.adapter_path == adapter and job.manifest["job"] == "ftjob-1"
    assert job.manifest_hash


def test_remote_adapter_folder_falls_back_to_the_registry_manifest(served):
    client, adapter = served
    shutil.rmtree(adapter)  # as seen from another machine: the folder is not here
    _, job = _resolve(client)
    assert job.adapter_path is None and job.manifest["job"] == "ftjob-1"


def test_an_alias_resolves_to_the_manifest_of_its_current_target(served):
    # What a schedule naming an alias relies on: each run follows the alias's target.
    client, adapter = served
    response = client.post("/v1/aliases/docker/promote", json={"adapter": "ft:tiny:x:ftjob-1"},
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    _, job = _resolve(client, "docker")
    assert job.model_id == "docker"
    assert job.adapter_path == adapter and job.manifest["job"] == "ftjob-1"
