"""A small typed client for the tuneserve API, used by the UI and nothing else.

The UI talks to the service only through this client, over HTTP, so it works the same
against the server it is mounted in and against a remote deployment. The OpenAI-shaped
endpoints (models, streamed chat, files, fine-tuning jobs) go through the official
``openai`` SDK; only tuneserve's own ``/v1/adapters``, ``/v1/evaluations`` and
``/reports`` use plain httpx.
Every failure (refusal by the server, endpoint missing, connection refused, timeout)
becomes a :class:`ServerError` whose ``str()`` is one readable sentence for the page.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai

# Generation on a CPU can take a while before the first byte; listing calls should not.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, read=300.0)
# Starlette's default detail for a route that does not exist (the service wraps it in the
# OpenAI error envelope but keeps the text), as opposed to "adapter 'x' is not registered".
_MISSING_ROUTE_MESSAGES = {"not found", "method not allowed"}


class ServerError(Exception):
    """A request the server refused or could not answer.

    ``status`` is the HTTP status (None when the server was not reached); ``code`` and
    ``message`` come from the OpenAI error object when the server sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        endpoint: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.endpoint = endpoint

    @property
    def not_available(self) -> bool:
        """True when the server has no such endpoint (an older or partial deployment)."""
        return self.status in (404, 405) and self.message.strip().lower() in _MISSING_ROUTE_MESSAGES

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        if self.not_available:
            return f"{self.endpoint or 'This feature'} is not available on this server."
        hint = ""
        if self.status == 401:
            hint = " Check the API key (admin actions need the admin key)."
        elif self.status == 403:
            hint = " This action needs the admin key: log in with it."
        code = f", {self.code}" if self.code else ""
        message = self.message.strip()
        if hint and not message.endswith((".", "!", "?")):
            message += "."
        return f"The server refused the request (HTTP {self.status}{code}): {message}{hint}"


def error_from_response(response: Any, body: bytes | None = None) -> ServerError:
    """Turn a non-2xx response (httpx's, or the SDK's httpx2 one) into a
    :class:`ServerError` (OpenAI error object aware)."""
    raw = body if body is not None else response.content
    message, code = _parse_error_body(raw)
    if not message:
        message = response.reason_phrase or f"HTTP {response.status_code}"
    endpoint = f"{response.request.method} {response.request.url.path}"
    return ServerError(message, status=response.status_code, code=code, endpoint=endpoint)


def _parse_error_body(raw: bytes) -> tuple[str, str | None]:
    try:
        payload = json.loads(raw or b"null")
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        # An HTML error page from a proxy is not worth showing in full.
        return (text[:300] if not text.startswith("<") else ""), None
    return _message_of(payload)


def _message_of(payload: Any) -> tuple[str, str | None]:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            return str(error.get("message") or ""), (str(code) if code is not None else None)
        if isinstance(error, str):
            return error, None
        detail = payload.get("detail")
        if isinstance(detail, str):
            return detail, None
        if detail is not None:
            return json.dumps(detail)[:300], None
    return "", None


@dataclass
class ModelCard:
    """One entry of ``GET /v1/models``: the base model or an adapter (``parent`` set)."""

    id: str
    parent: str | None = None
    owned_by: str | None = None
    created: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return bool(self.parent) and self.parent != self.id


@dataclass
class SamplingParams:
    """The generation parameters the Compare tab exposes (OpenAI names)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int | None = None

    def to_request(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return body


@dataclass
class StreamEvent:
    """One step of a streamed chat completion.

    ``delta`` is new text; the final event has ``done=True`` with the timing: time to the
    first token, total time and the completion token count (server usage when sent,
    otherwise the number of content chunks).
    """

    delta: str = ""
    done: bool = False
    ttft_s: float | None = None
    total_s: float | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first one over the time after the first one."""
        if not self.completion_tokens or self.total_s is None:
            return None
        decode_s = self.total_s - (self.ttft_s or 0.0)
        if self.completion_tokens > 1 and decode_s > 0:
            return (self.completion_tokens - 1) / decode_s
        return self.completion_tokens / self.total_s if self.total_s > 0 else None


class TuneserveClient:
    """Async client for one tuneserve server.

    ``api_key`` is sent as ``Authorization: Bearer`` on every call; admin calls take the
    admin key explicitly so the page never mixes them up.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        base_url = (base_url or "").strip().rstrip("/")
        if not base_url:
            raise ServerError("No server URL given: enter the tuneserve server address.")
        if not base_url.startswith(("http://", "https://")):
            base_url = "http://" + base_url
        # Accept the OpenAI-style ".../v1" base URL people paste from SDK snippets.
        if base_url.endswith("/v1"):
            base_url = base_url[: -len("/v1")]
        self.base_url = base_url
        self.api_key = (api_key or "").strip() or None
        self._timeout = timeout

    # -- plumbing ---------------------------------------------------------------------

    def _headers(self, key: str | None) -> dict[str, str]:
        key = (key or "").strip() or None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout)

    @asynccontextmanager
    async def _openai(self) -> AsyncIterator[openai.AsyncOpenAI]:
        """An SDK client for one call, its errors turned into :class:`ServerError`."""
        timeout = self._timeout
        if isinstance(timeout, httpx.Timeout):
            timeout = timeout.read or 300.0
        sdk = openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1",
            # The SDK needs a key; a server without auth ignores it, one with auth refuses
            # it as it would refuse no key.
            api_key=self.api_key or "no-key",
            timeout=timeout,
            max_retries=0,  # the page shows a refusal at once; the user retries
        )
        try:
            async with sdk:
                yield sdk
        except openai.APIStatusError as exc:
            raise error_from_response(exc.response) from exc
        except openai.APITimeoutError as exc:
            raise ServerError(f"The server at {self.base_url} did not answer in time.") from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise ServerError(f"Cannot reach the server at {self.base_url}: {cause}") from exc
        except openai.APIError as exc:  # an error object inside a stream
            code = exc.body.get("code") if isinstance(exc.body, dict) else None
            raise ServerError(
                f"The server stopped the answer: {exc.message}",
                code=str(code) if code is not None else None,
            ) from exc

    async def _request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        admin: bool = False,
        **kwargs: Any,
    ) -> Any:
        headers = self._headers(key if admin else (key or self.api_key))
        try:
            async with self._client() as http:
                response = await http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServerError(f"The server at {self.base_url} did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise ServerError(f"Cannot reach the server at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ServerError(
                f"The server answered {method} {path} with something that is not JSON."
            ) from exc

    # -- models and chat --------------------------------------------------------------

    async def list_models(self) -> list[ModelCard]:
        """``GET /v1/models``: the base first, then adapters by name."""
        async with self._openai() as sdk:
            models = [m.to_dict() async for m in sdk.models.list()]
        known = {"id", "parent", "owned_by", "created", "object"}
        cards = [
            ModelCard(
                id=str(item.get("id")),
                parent=item.get("parent"),
                owned_by=item.get("owned_by"),
                created=item.get("created"),
                extra={k: v for k, v in item.items() if k not in known},
            )
            for item in models
        ]
        cards.sort(key=lambda c: (c.is_adapter, c.id))
        return cards

    async def stream_chat(
        self,
        model: str,
        messages: list[dict[str, str]],
        params: SamplingParams,
    ) -> AsyncIterator[StreamEvent]:
        """Stream a chat completion for one model; the last event has the timing.

        Raises :class:`ServerError` before the first event if the server refuses, or
        mid-stream if it reports an error inside the stream.
        """
        start = time.perf_counter()
        first: float | None = None
        chunks = 0
        usage_tokens: int | None = None
        finish: str | None = None
        async with self._openai() as sdk:
            stream = await sdk.chat.completions.create(
                model=model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **params.to_request(),
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    usage_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    text = choice.delta.content or ""
                    if text:
                        if first is None:
                            first = time.perf_counter()
                        chunks += 1
                        yield StreamEvent(delta=text)
        end = time.perf_counter()
        yield StreamEvent(
            done=True,
            ttft_s=(first - start) if first is not None else None,
            total_s=end - start,
            completion_tokens=usage_tokens if usage_tokens is not None else chunks,
            finish_reason=finish,
        )

    # -- adapters (admin) -------------------------------------------------------------

    async def list_adapters(self) -> list[dict[str, Any]]:
        """``GET /v1/adapters``: the registry records."""
        return _data_list(await self._request("GET", "/v1/adapters"))

    async def register_adapter(self, name: str, path: str, admin_key: str | None) -> Any:
        """``POST /v1/adapters`` with a server-side folder path (admin)."""
        return await self._request(
            "POST", "/v1/adapters", key=admin_key, admin=True, json={"name": name, "path": path}
        )

    async def upload_adapter(self, name: str, archive: Path, admin_key: str | None) -> Any:
        """``POST /v1/adapters`` with an uploaded archive of an adapter folder (admin)."""
        with open(archive, "rb") as handle:
            return await self._request(
                "POST",
                "/v1/adapters",
                key=admin_key,
                admin=True,
                data={"name": name},
                files={"file": (Path(archive).name, handle, "application/octet-stream")},
            )

    async def delete_adapter(self, name: str, admin_key: str | None) -> Any:
        """``DELETE /v1/adapters/{name}`` (admin)."""
        return await self._request(
            "DELETE", f"/v1/adapters/{quote(name, safe='')}", key=admin_key, admin=True
        )

    # -- files and fine-tuning jobs -----------------------------------------------------

    async def upload_file(self, path: Path, purpose: str = "fine-tune") -> dict[str, Any]:
        """``POST /v1/files``: the server validates the dataset and refuses bad rows."""
        async with self._openai() as sdk:
            return (await sdk.files.create(file=Path(path), purpose=purpose)).to_dict()

    async def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/fine_tuning/jobs`` (``body``: the SDK's keyword arguments)."""
        async with self._openai() as sdk:
            return (await sdk.fine_tuning.jobs.create(**body)).to_dict()

    async def list_jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """``GET /v1/fine_tuning/jobs`` (newest first)."""
        async with self._openai() as sdk:
            page = await sdk.fine_tuning.jobs.list(limit=limit)
        return [job.to_dict() for job in page.data]

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/fine_tuning/jobs/{id}``."""
        async with self._openai() as sdk:
            return (await sdk.fine_tuning.jobs.retrieve(job_id)).to_dict()

    async def job_events(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """``GET /v1/fine_tuning/jobs/{id}/events``, returned oldest first."""
        async with self._openai() as sdk:
            page = await sdk.fine_tuning.jobs.list_events(job_id, limit=limit)
        # The API lists newest first (as OpenAI does); timestamps are whole seconds, so
        # reversing keeps the order that sorting by time could scramble.
        return [event.to_dict() for event in reversed(page.data)]

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        """``POST /v1/fine_tuning/jobs/{id}/cancel``."""
        async with self._openai() as sdk:
            return (await sdk.fine_tuning.jobs.cancel(job_id)).to_dict()

    # -- evaluation runs and reports ----------------------------------------------------

    async def start_evaluation(
        self, suite: str, models: list[str], limit: int | None = None
    ) -> dict[str, Any]:
        """``POST /v1/evaluations``: the server runs it in a worker; poll the run's id."""
        body: dict[str, Any] = {"suite": suite, "models": models}
        if limit:
            body["limit"] = limit
        return await self._request("POST", "/v1/evaluations", json=body)

    async def get_evaluation(self, run_id: str) -> dict[str, Any]:
        """``GET /v1/evaluations/{id}``: the run's status, then its report id."""
        return await self._request("GET", f"/v1/evaluations/{quote(run_id, safe='')}")

    async def report_record(self, report_id: str) -> dict[str, Any]:
        """``GET /reports/{id}/report.json``: the run's record (metrics per model)."""
        return await self._request("GET", f"/reports/{quote(report_id, safe='')}/report.json")

    async def list_reports(self, limit: int = 100) -> list[dict[str, Any]]:
        """``GET /reports``: stored evaluation reports, newest first."""
        return _data_list(await self._request("GET", "/reports", params={"limit": limit}))

    async def report_text(self, report_id: str, filename: str = "report.md") -> str:
        """``GET /reports/{id}/{file}`` as text (the Markdown report by default)."""
        path = f"/reports/{quote(report_id, safe='')}/{quote(filename, safe='')}"
        try:
            async with self._client() as http:
                response = await http.get(path, headers=self._headers(self.api_key))
        except httpx.HTTPError as exc:
            raise ServerError(f"Cannot reach the server at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.text


def _data_list(payload: Any) -> list[dict[str, Any]]:
    """The ``data`` list of an OpenAI list object (or a bare list)."""
    if isinstance(payload, dict):
        payload = payload.get("data", payload.get("items", []))
    return [item for item in (payload or []) if isinstance(item, dict)]
