"""The real app (``build_app``) on the fake engine in a TestClient, with the official
``openai`` SDK talking to it through that client: for API tests that need no real engine.
The ``server_factory`` fixture (tests/unit/conftest.py) makes them."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import openai
from fastapi.testclient import TestClient

from service.app import build_app
from service.settings import Settings
from tests.unit.service_fake_engine import FakeEngine


def _factory(holder: dict, **kw):
    def factory(settings, model_path: Path, base_id: str):
        from transformers import AutoTokenizer

        holder["engine"] = FakeEngine(model_path=model_path,
                                      tokenizer=AutoTokenizer.from_pretrained(model_path), **kw)
        return holder["engine"]

    return factory


class Server:
    """The app in a TestClient, and the OpenAI SDK talking to it through that client."""

    def __init__(self, model_dir: Path, engine_kw: dict | None = None, **settings_kw) -> None:
        self.holder: dict = {}
        settings = Settings(base_model=str(model_dir), served_model_name="tiny", **settings_kw)
        self.http = TestClient(build_app(settings, _factory(self.holder, **(engine_kw or {}))))
        self.http.__enter__()
        deadline = time.monotonic() + 10
        while self.http.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the app did not become ready"
            time.sleep(0.02)
        self.sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused",
                                 http_client=self.http)

    @property
    def engine(self) -> FakeEngine:
        return self.holder["engine"]

    def close(self) -> None:
        self.http.__exit__(None, None, None)

    def upload(self, lines: list[dict]) -> str:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return self.sdk.files.create(file=("requests.jsonl", io.BytesIO(data)),
                                     purpose="batch").id

    def wait(self, batch_id: str, statuses=("completed", "failed", "cancelled", "expired")):
        deadline = time.monotonic() + 30
        while (batch := self.sdk.batches.retrieve(batch_id)).status not in statuses:
            assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
            time.sleep(0.02)
        return batch

    def lines(self, file_id: str | None) -> list[dict]:
        if file_id is None:
            return []
        return [json.loads(x) for x in self.sdk.files.content(file_id).text.splitlines()]
