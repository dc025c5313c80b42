"""Access control and hostile input on a real server (``tuneserve serve``, real vLLM,
tiny model): every bad request gets a 4xx OpenAI error with a readable message and no
stack trace, and the server keeps serving afterwards; API keys are checked on every
route and never written to the server log."""

from __future__ import annotations

import http.client
import io
import json
import os
import struct
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.integration.reliability_support import assert_error, chat_ok, metric, wait_idle
from tests.unit.service_lora import make_lora_adapter

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "hello"}]
# Routes anyone may call: liveness/readiness probes, the schema, the UI (`/metrics` needs
# an admin or metrics key on a server with keys).
PUBLIC_PATHS = {"/health", "/ready", "/openapi.json", "/docs", "/redoc",
                "/docs/oauth2-redirect"}
ADMIN_ROUTES = [
    ("POST", "/v1/adapters", {"name": "x", "path": "/tmp"}),
    ("DELETE", "/v1/adapters/x", None),
    ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp"}),
    ("POST", "/v1/unload_lora_adapter", {"lora_name": "x"}),
]


@pytest.fixture(scope="module")
def server(tiny_live_server):
    yield tiny_live_server
    # Whatever a test threw at it, the server still answers a normal request.
    chat_ok(tiny_live_server)


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    return make_lora_adapter(Path(tiny_model_dir), tmp_path_factory.mktemp("rel") / "adapter")


def _post(server, path: str, *, admin: bool = False, **kw) -> httpx.Response:
    with server.http(admin=admin, timeout=120) as client:
        return client.post(path, **kw)


def _chat(server, **fields) -> httpx.Response:
    body = {"model": server.model_id, "messages": MESSAGES, "max_tokens": 2, **fields}
    return _post(server, "/v1/chat/completions", json=body)


# -- access --------------------------------------------------------------------------------
def test_user_key_can_infer(server):
    chat_ok(server)
    with server.http() as client:
        response = client.post("/v1/completions", json={"model": server.model_id,
                                                         "prompt": "hi", "max_tokens": 2})
    assert response.status_code == 200, response.text


def test_every_non_public_route_needs_a_key(server):
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    checked = 0
    for path, operations in schema["paths"].items():
        if path in PUBLIC_PATHS:
            continue
        concrete = path.replace("{", "").replace("}", "")  # any value: auth runs first
        for method in operations:
            for headers in ({}, {"Authorization": "Bearer not-a-real-key-123456"},
                            {"Authorization": "Basic dXNlcjpwYXNz"}):
                response = httpx.request(method.upper(), f"{server.base_url}{concrete}",
                                         headers=headers, timeout=30)
                assert_error(response, 401)
                checked += 1
    assert checked >= 3 * 15  # the schema really lists the API (not an empty document)


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_refuse_user_and_missing_keys(server, method, path, body):
    kwargs = {"json": body} if body is not None else {}
    with server.http() as user:
        assert_error(user.request(method, path, **kwargs), 403, "insufficient_permissions")
    assert_error(httpx.request(method, f"{server.base_url}{path}", **kwargs), 401)
    # The admin key passes the check (the request then fails on its own merits, never 401/403).
    with server.http(admin=True) as admin:
        assert admin.request(method, path, **kwargs).status_code not in (401, 403)


def test_admin_key_also_infers(server):
    with server.http(admin=True) as admin:
        response = admin.post("/v1/chat/completions", json={
            "model": server.model_id, "messages": MESSAGES, "max_tokens": 2})
    assert response.status_code == 200, response.text


# -- hostile request bodies ----------------------------------------------------------------
def test_huge_max_tokens(server):
    error = assert_error(_chat(server, max_tokens=10**12), 400)
    assert "max_tokens" in error["message"] or "context" in error["message"], error


@pytest.mark.parametrize("n", [17, 10_000, 2**40])
def test_n_far_over_limit(server, n):
    error = assert_error(_chat(server, n=n), 400)
    assert error["param"] == "n" or "n" in error["message"], error


def test_prompt_past_context(server):
    with server.http() as client:
        response = client.post("/v1/completions", json={
            "model": server.model_id, "prompt": "docker run " * 3000, "max_tokens": 4})
    assert_error(response, 400, "context_length_exceeded")
    assert_error(_chat(server, messages=[{"role": "user", "content": "ps -a " * 3000}]), 400,
                 "context_length_exceeded")


def test_oversized_body(server):
    # 24 MiB of prompt: refused as too large (413), never a crash or a stall.
    big = "a" * (24 * 1024 * 1024)
    response = _chat(server, messages=[{"role": "user", "content": big}])
    # Refused from Content-Length, before the body is read or tokenized (tokenizing it
    # took ~40 s of the event loop before the limit existed).
    assert_error(response, 413, "payload_too_large")


def test_a_2gb_upload_is_cut_off_at_the_cap(server):
    """2 GB streamed to /v1/files without a length: the server stops reading just past its
    upload cap (TUNESERVE_JOBS_MAX_UPLOAD_MB, 100 MB here), answers 413, and its memory
    does not grow with the body."""
    import select
    import socket
    from urllib.parse import urlsplit

    import psutil

    from service.body_limits import MULTIPART_SLACK

    cap = 100 * 1_000_000 + MULTIPART_SLACK
    process = psutil.Process(server.process.pid)
    rss_before = process.memory_info().rss
    url = urlsplit(server.base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    sock.sendall(
        (f"POST /v1/files HTTP/1.1\r\nHost: {url.netloc}\r\n"
         f"Authorization: Bearer {server.user_key}\r\nTransfer-Encoding: chunked\r\n"
         "Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode())

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    sock.sendall(chunk(b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                       b"fine-tune\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                       b'filename="big.jsonl"\r\n\r\n'))
    block, sent, peak_rss = chunk(b"x" * (1 << 20)), 0, rss_before
    try:
        while sent < 2 << 30 and not select.select([sock], [], [], 0)[0]:
            sock.sendall(block)
            sent += 1 << 20
            if sent % (16 << 20) == 0:
                peak_rss = max(peak_rss, process.memory_info().rss)
    except (BrokenPipeError, ConnectionResetError):
        pass
    # The stdlib's parser reads the whole reply (headers and body may come in separate
    # segments: one recv got only the headers in a CI run).
    reply = http.client.HTTPResponse(sock)
    reply.begin()
    body = reply.read().decode(errors="replace")
    sock.close()
    assert (reply.version, reply.status) == (11, 413), (reply.version, reply.status, body[:300])
    assert '"payload_too_large"' in body
    # What the client got into the socket: the cap plus what the kernel buffers hold.
    assert sent <= cap + (32 << 20), sent
    assert peak_rss - rss_before < 64 << 20, (rss_before, peak_rss)
    chat_ok(server)


def test_invalid_utf8(server):
    raw = b'{"model": "' + server.model_id.encode() + b'", "messages": [{"role": "user", ' \
          b'"content": "\xff\xfe\xc3\x28"}], "max_tokens": 2}'
    response = _post(server, "/v1/chat/completions", content=raw,
                     headers={"Content-Type": "application/json"})
    assert_error(response, 400)


@pytest.mark.parametrize("depth", [64, 5_000, 200_000])
def test_deeply_nested_json(server, depth):
    nested = "[" * depth + "]" * depth
    raw = f'{{"model": "{server.model_id}", "messages": {nested}, "max_tokens": 2}}'
    response = _post(server, "/v1/chat/completions", content=raw.encode(),
                     headers={"Content-Type": "application/json"})
    assert_error(response, 400)


@pytest.mark.parametrize("fields", [
    {"messages": "hello"},
    {"messages": [{"role": "user", "content": 42}]},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": []},
    {"max_tokens": "lots"},
    {"max_tokens": -1},
    {"temperature": "hot"},
    {"temperature": 1e308},
    {"stop": {"a": 1}},
    {"model": ["a", "b"]},
    {"stream": "yes-please"},
    {"n": "two"},
    {"logprobs": True, "top_logprobs": 10**6},
    {"seed": 2**70},
])
def test_wrong_types(server, fields):
    assert_error(_chat(server, **fields), 400)


def test_not_json_and_wrong_content_type(server):
    for content, ctype in [(b"not json at all", "application/json"), (b"", "application/json"),
                           (b"model=x", "application/x-www-form-urlencoded"),
                           (b"[1, 2, 3]", "application/json"), (b"null", "application/json")]:
        response = _post(server, "/v1/chat/completions", content=content,
                         headers={"Content-Type": ctype})
        assert_error(response, 400)


def test_unknown_fields_are_refused_by_name_not_fatal(server):
    # Nothing a client sends is silently dropped: an unknown field is a 400 naming it,
    # never a 5xx (docs/api.md).
    error = assert_error(_chat(server, some_future_field={"x": [1, 2]}), 400)
    assert error["param"] == "some_future_field", error


@pytest.mark.parametrize("model", ["../../etc/passwd", "/etc/passwd", "..", "a/../../b",
                                   "%2e%2e%2f", "x" * 5000, "tiny-gemma\x00"])
def test_model_names_that_are_paths(server, model):
    assert_error(_chat(server, model=model), (400, 404))


# -- hostile adapters ----------------------------------------------------------------------
def _register(server, name: str, path) -> httpx.Response:
    return _post(server, "/v1/adapters", admin=True, json={"name": name, "path": str(path)})


@pytest.mark.parametrize("name", ["../evil", "..", "/abs", "a\\b", "with space", "", "x" * 300,
                                  "tiny-gemma"])
def test_adapter_names_rejected(server, tiny_adapter, name):
    assert_error(_register(server, name, tiny_adapter), 400, "invalid_adapter_name")


@pytest.mark.parametrize("path", ["/", "/etc", "/etc/passwd", "../../../../etc", "/proc/self",
                                  "/nonexistent/adapter", "relative/nothing", ""])
def test_adapter_paths_that_are_not_adapters(server, path):
    assert_error(_register(server, "pathy", path), (400, 404))


def _copy_adapter(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        (dst / item.name).write_bytes(item.read_bytes())
    return dst


def test_symlinked_weights_out_of_the_folder(server, tiny_adapter, tmp_path):
    folder = _copy_adapter(tiny_adapter, tmp_path / "linked")
    (folder / "adapter_model.safetensors").unlink()
    os.symlink("/etc/passwd", folder / "adapter_model.safetensors")
    error = assert_error(_register(server, "linked", folder), 400)
    assert "safetensors" in error["message"]
    assert "root:" not in error["message"]  # nothing of the target leaks back


def test_pickle_bin_weights_rejected(server, tiny_adapter, tmp_path):
    folder = _copy_adapter(tiny_adapter, tmp_path / "pickled")
    (folder / "adapter_model.safetensors").unlink()
    # A pickle that would run a command when unpickled: it must never be opened.
    marker = tmp_path / "pwned"
    payload = (b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    (folder / "adapter_model.bin").write_bytes(payload)
    assert_error(_register(server, "pickled", folder), 400, "unsafe_weights_format")
    assert not marker.exists()


def _lying_safetensors(path: Path, shape: list[int], data_bytes: int) -> None:
    header = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": {
        "dtype": "F32", "shape": shape, "data_offsets": [0, data_bytes]}}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)


@pytest.mark.parametrize(("shape", "data_bytes"), [
    ([8, 64], 8 * 64 * 4),            # claims 2 KiB, file holds 16 bytes
    ([2**31, 2**31], 16),              # shape and offsets disagree wildly
    ([8, -1], 16),                     # negative dimension
])
def test_safetensors_header_that_lies(server, tiny_adapter, tmp_path, shape, data_bytes):
    folder = _copy_adapter(tiny_adapter, tmp_path / "liar")
    _lying_safetensors(folder / "adapter_model.safetensors", shape, data_bytes)
    error = assert_error(_register(server, "liar", folder), 400)
    assert "is not a readable safetensors file" in error["message"]


def test_safetensors_header_length_bomb(server, tiny_adapter, tmp_path):
    folder = _copy_adapter(tiny_adapter, tmp_path / "bomb")
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    error = assert_error(_register(server, "hdrbomb", folder), 400)
    assert "is not a readable safetensors file" in error["message"]


def _upload(server, name: str, data: bytes, filename: str = "a.zip") -> httpx.Response:
    return _post(server, "/v1/adapters", admin=True, data={"name": name},
                 files={"file": (filename, data)})


def _tar(members: list[tarfile.TarInfo], payloads: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for info in members:
            data = payloads.get(info.name)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _adapter_files(adapter: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file()}


def test_archive_path_traversal_and_links(server, tiny_adapter, tmp_path):
    files = _adapter_files(tiny_adapter)
    for evil in ["../escape.txt", "/tmp/abs-escape.txt", "a/../../escape.txt"]:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
            zf.writestr(evil, b"x")
        assert_error(_upload(server, "trav", buffer.getvalue()), 400, "unsafe_archive")
    # tar: a symlink member pointing out, and a hard link to /etc/passwd
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        infos = []
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            infos.append(info)
        link = tarfile.TarInfo("adapter_model.safetensors.link")
        link.type, link.linkname = kind, "/etc/passwd"
        infos.append(link)
        assert_error(_upload(server, "linky", _tar(infos, files), "a.tar.gz"), 400,
                     "unsafe_archive")
    assert not Path("/tmp/abs-escape.txt").exists()


def test_archive_bombs(server, tiny_adapter):
    files = _adapter_files(tiny_adapter)
    # 1: a bomb whose headers say what it unpacks to (3 GiB of zeros, here 4 MiB with the
    # size fields set as a real bomb's would be): refused from the headers, before any
    # byte is written (the server allows 4 x max_upload_mb = 2 GiB unpacked).
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("zeros.bin", b"\0" * (4 * 1024 * 1024))
    raw = bytearray(buffer.getvalue())
    _patch_zip_sizes(raw, b"zeros.bin", 3 * 1024**3)
    assert_error(_upload(server, "bomb1", bytes(raw)), 400, "archive_too_large")
    # 2: a zip whose headers lie the other way (say 1 KiB, hold 64 MiB of zeros).
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("liar.bin", b"\0" * (64 * 1024 * 1024))
    raw = bytearray(buffer.getvalue())
    _patch_zip_sizes(raw, b"liar.bin", 1024)
    assert_error(_upload(server, "bomb2", bytes(raw)), 400, "bad_archive")
    # 3: a tar.gz whose member claims 3 GiB (headers of a real tar bomb).
    infos = []
    for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        infos.append(info)
    tar_raw = _tar(infos, files)
    big = tarfile.TarInfo("zeros.bin")
    big.size = 3 * 1024**3
    header_only = io.BytesIO()
    with tarfile.open(fileobj=header_only, mode="w:gz") as tf:
        for info in infos:
            tf.addfile(info, io.BytesIO(files[info.name]))
        tf.fileobj.write(big.tobuf(format=tarfile.GNU_FORMAT))  # header, data cut short
    assert tar_raw  # the honest archive builds; the bomb is refused or unreadable
    assert_error(_upload(server, "bomb3", header_only.getvalue(), "a.tar.gz"), 400)
    # 4: not an archive at all, and an empty upload.
    assert_error(_upload(server, "bomb4", b"\x00" * 1000), 400)
    assert_error(_upload(server, "bomb5", b""), 400)
    with server.http() as client:
        served = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert not {f"bomb{i}" for i in range(1, 6)} & served


def _patch_zip_sizes(raw: bytearray, name: str | bytes, size: int) -> None:
    """Rewrite the uncompressed size of member ``name`` in its local and central headers."""
    name = name.encode() if isinstance(name, str) else name
    local = raw.find(b"PK\x03\x04")
    while local != -1:
        name_len = struct.unpack_from("<H", raw, local + 26)[0]
        if bytes(raw[local + 30: local + 30 + name_len]) == name:
            struct.pack_into("<I", raw, local + 22, size)
        local = raw.find(b"PK\x03\x04", local + 4)
    central = raw.find(b"PK\x01\x02")
    while central != -1:
        name_len = struct.unpack_from("<H", raw, central + 28)[0]
        if bytes(raw[central + 46: central + 46 + name_len]) == name:
            struct.pack_into("<I", raw, central + 24, size)
        central = raw.find(b"PK\x01\x02", central + 4)


def test_multipart_without_file_or_name(server):
    assert_error(_post(server, "/v1/adapters", admin=True, data={"name": "x"},
                       files={"other": ("a", b"x")}), 400)
    assert_error(_post(server, "/v1/adapters", admin=True, files={"file": ("a.zip", b"x")}),
                 400)


# -- disconnects ---------------------------------------------------------------------------
def test_clients_dropping_mid_stream_leave_nothing_running(server):
    body = {"model": server.model_id, "messages": MESSAGES, "max_tokens": 1000,
            "stream": True, "ignore_eos": True}
    tokens_before = metric(server.base_url, "tuneserve_completion_tokens_total")
    clients = [httpx.Client(base_url=server.base_url, timeout=60,
                            headers={"Authorization": f"Bearer {server.user_key}"})
               for _ in range(8)]
    streams = []
    try:
        for client in clients:
            stream = client.stream("POST", "/v1/chat/completions", json=body)
            response = stream.__enter__()
            assert response.status_code == 200
            next(response.iter_lines())  # the first chunk: the request is running
            streams.append(stream)
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)  # hang up mid-stream
        for client in clients:
            client.close()
    assert wait_idle(server.base_url), "the engine kept generating for clients that left"
    # They stopped early (aborted), not after running all 8 x 1000 tokens to the end.
    generated = metric(server.base_url, "tuneserve_completion_tokens_total") - tokens_before
    assert generated < 8 * 1000 / 2, generated
    chat_ok(server)


def test_server_still_serves_after_everything(server, tiny_adapter):
    chat_ok(server)
    assert _register(server, "rel-good", tiny_adapter).status_code == 201
    try:
        chat_ok(server, "rel-good")
    finally:
        server.unregister_adapter("rel-good")


def test_keys_never_logged(server):
    # A wrong key too: a failed login must not echo what was tried.
    httpx.get(f"{server.base_url}/v1/models",
              headers={"Authorization": "Bearer wrong-secret-zyx-987654"})
    log = server.log_path.read_text(errors="replace")
    assert log, "the server log is empty; nothing was checked"
    for secret in (server.user_key, server.admin_key, "wrong-secret-zyx-987654"):
        assert secret not in log

