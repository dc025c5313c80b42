"""Every error the serving API promises, on the real server (real Gemma, real vLLM):
OpenAI error objects with the right status through the official SDK and raw HTTP;
rejected adapters (malicious name, pickle-only, another base, too-large rank) leave the
server serving; a client that disconnects mid-stream aborts its generation."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import metrics_text
from tests.unit.service_lora import make_lora_adapter

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "hello"}]


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def test_unknown_model_404(live_server):
    with pytest.raises(openai.NotFoundError) as exc:
        live_server.openai().chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert exc.value.code == "model_not_found"


def test_bad_params_400(live_server):
    client = live_server.openai()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=live_server.model_id, messages=MESSAGES,
                                       temperature=7)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=live_server.model_id, prompt="x", n=0)


def test_prompt_too_long_400(live_server):
    with pytest.raises(openai.BadRequestError) as exc:
        live_server.openai().completions.create(model=live_server.model_id,
                                                prompt="docker " * 1500, max_tokens=4)
    assert exc.value.code == "context_length_exceeded"


def test_auth_401_and_403(live_server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key="wrong-key-000000").models.list()
    _error(httpx.get(f"{live_server.base_url}/v1/models"), 401, "invalid_api_key")
    with live_server.http() as user:
        _error(user.post("/v1/adapters", json={"name": "x", "path": "/tmp"}), 403)
        _error(user.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"}),
               403)
        _error(user.delete("/v1/adapters/x"), 403)


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", "gemma-3-270m", "x" * 200])
def test_malicious_or_clashing_name_rejected(live_server, gemma_test_adapter, name):
    with live_server.http(admin=True) as admin:
        response = admin.post("/v1/adapters", json={"name": name, "path": str(gemma_test_adapter)})
    _error(response, 400, "invalid_adapter_name")


def _register(live_server, path: Path, name: str) -> httpx.Response:
    with live_server.http(admin=True) as admin:
        return admin.post("/v1/adapters", json={"name": name, "path": str(path)})


def test_pickle_only_adapter_rejected(live_server, gemma_test_adapter, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(gemma_test_adapter / "adapter_config.json", folder)
    torch.save(load_file(gemma_test_adapter / "adapter_model.safetensors"),
               folder / "adapter_model.bin")
    error = _error(_register(live_server, folder, "pickled"), 400, "unsafe_weights_format")
    assert "pickle" in error["message"]


def test_adapter_of_another_base_rejected(live_server, tiny_model_dir, tmp_path):
    tiny_adapter = make_lora_adapter(tiny_model_dir, tmp_path / "tiny-adapter")
    error = _error(_register(live_server, tiny_adapter, "tiny-made"), 400, "base_model_mismatch")
    assert "gemma-3-270m" in error["message"]
    # Even when it lies about its base, the tensor shapes give it away.
    config = json.loads((tiny_adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "gemma-3-270m"
    (tiny_adapter / "adapter_config.json").write_text(json.dumps(config))
    _error(_register(live_server, tiny_adapter, "tiny-made"), 400, "base_model_mismatch")


def test_too_large_rank_rejected(live_server, real_model_dir, tmp_path):
    adapter = make_lora_adapter(real_model_dir, tmp_path / "r32", r=32,
                                target_modules=("q_proj",))
    error = _error(_register(live_server, adapter, "rank32"), 400, "rank_too_large")
    assert "max_lora_rank 16" in error["message"]


def test_rejections_leave_server_serving(live_server):
    response = live_server.openai().chat.completions.create(
        model=live_server.model_id, messages=MESSAGES, max_tokens=2)
    assert response.choices[0].message.content is not None


def _tar_bytes(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(folder, arcname="adapter")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_upload_archive_and_vllm_compatible_endpoints(live_server, gemma_test_adapter):
    client = live_server.openai()
    with live_server.http(admin=True) as admin:
        evil = _tar_bytes(gemma_test_adapter, {"../../escape.txt": b"x"})
        _error(admin.post("/v1/adapters", data={"name": "evil"},
                          files={"file": ("a.tar.gz", evil)}), 400, "unsafe_archive")
        response = admin.post("/v1/adapters", data={"name": "uploaded"},
                              files={"file": ("a.tar.gz", _tar_bytes(gemma_test_adapter))})
        assert response.status_code == 201, response.text
        assert response.json()["source"] == "upload"
        assert client.chat.completions.create(model="uploaded", messages=MESSAGES,
                                              max_tokens=2).model == "uploaded"
        assert admin.delete("/v1/adapters/uploaded").json()["deleted"] is True
        assert not Path(response.json()["path"]).exists()  # upload folder cleaned up
        _error(admin.delete("/v1/adapters/uploaded"), 404, "adapter_not_found")

        loaded = admin.post("/v1/load_lora_adapter",
                            json={"lora_name": "vllm-style", "lora_path": str(gemma_test_adapter)})
        assert loaded.status_code == 200 and "Success" in loaded.text
        assert "vllm-style" in {m.id for m in client.models.list().data}
        assert admin.post("/v1/unload_lora_adapter",
                          json={"lora_name": "vllm-style"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="vllm-style", messages=MESSAGES, max_tokens=2)


def _metric(live_server, name: str) -> float:
    text = metrics_text(live_server.base_url)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_client_disconnect_aborts_generation(live_server):
    body = {"model": live_server.model_id, "messages": MESSAGES, "max_tokens": 900,
            "stream": True, "ignore_eos": True}
    tokens_before = _metric(live_server, "tuneserve_completion_tokens_total")
    with live_server.http() as client, client.stream("POST", "/v1/chat/completions",
                                                     json=body) as response:
        for _ in response.iter_lines():
            break  # one chunk, then hang up mid-stream
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _metric(live_server, "vllm:num_requests_running") == 0 and \
                _metric(live_server, "tuneserve_requests_in_flight") == 0:
            break
        time.sleep(0.25)
    else:
        pytest.fail("the engine kept generating for a client that left")
    # The request stopped long before its 900 tokens: it was aborted, not run to the end.
    assert _metric(live_server, "tuneserve_completion_tokens_total") - tokens_before < 900
