"""Per-project rate limits on inference: requests and tokens per minute, as OpenAI's.

Each project (``service/keys`` → ``request.state.project``) has two token buckets that
refill continuously to their per-minute limit. A request needs one request from the first
and a non-empty second; its tokens (prompt + completion, counted by the engine stream)
are charged when it ends, so a long answer can drive the bucket below zero and the next
requests wait. Over a limit: 429 ``rate_limit_exceeded`` with ``Retry-After``. Every
inference response carries OpenAI's ``x-ratelimit-*`` headers for the caller's project.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import Role, require_user
from service.errors import Overloaded

# Charges the current request's tokens to its project (set per request, read by the
# engine stream in service/generation.py when the request ends).
_CHARGE: ContextVar[Callable[[int], None] | None] = ContextVar("rate_limit_charge",
                                                                default=None)
_STATE_KEY = "ratelimit_headers"


def charge_tokens(tokens: int) -> None:
    charge = _CHARGE.get()
    if charge is not None:
        charge(tokens)


@dataclass
class Bucket:
    """``limit`` per minute, refilled continuously; ``level`` may go below zero."""

    limit: int
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.updated) * self.limit / 60)
        self.updated = now

    def seconds_until(self, level: float) -> float:
        return max(0.0, (level - self.level) * 60 / self.limit)


@dataclass
class ProjectBuckets:
    requests: Bucket | None
    tokens: Bucket | None
    headers: dict[str, str] = field(default_factory=dict)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``0.5s``."""
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60)}s"
    return f"{seconds:.3g}s"


class RateLimiter:
    def __init__(self, limits_for: Callable[[str], tuple[int | None, int | None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits_for = limits_for  # project -> (requests/min, tokens/min); None: no limit
        self.clock = clock
        self._projects: dict[str, ProjectBuckets] = {}

    def _buckets(self, project: str) -> ProjectBuckets:
        if project not in self._projects:
            now = self.clock()
            rpm, tpm = self.limits_for(project)
            self._projects[project] = ProjectBuckets(
                Bucket(rpm, rpm, now) if rpm else None, Bucket(tpm, tpm, now) if tpm else None)
        return self._projects[project]

    def admit(self, project: str) -> dict[str, str]:
        """Take one request from ``project``'s budget; the response headers to send.
        Raises 429 with Retry-After when a limit is reached."""
        buckets = self._buckets(project)
        now = self.clock()
        waits = []
        for name, bucket, need in (("requests", buckets.requests, 1.0),
                                   ("tokens", buckets.tokens, 1.0)):
            if bucket is not None:
                bucket.refill(now)
                if bucket.level < need:
                    waits.append((bucket.seconds_until(need), name, bucket.limit))
        if waits:
            wait, name, limit = max(waits)
            raise Overloaded(
                f"rate limit reached for project {project!r}: {limit} {name} per minute; "
                f"retry in {_duration(wait)}",
                headers={"Retry-After": str(max(1, math.ceil(wait))), **self.headers(project)})
        if buckets.requests is not None:
            buckets.requests.level -= 1
        return self.headers(project)

    def charge(self, project: str, tokens: int) -> None:
        bucket = self._buckets(project).tokens
        if bucket is not None:
            bucket.refill(self.clock())
            bucket.level -= tokens

    def headers(self, project: str) -> dict[str, str]:
        headers = {}
        for name, bucket in (("requests", self._buckets(project).requests),
                             ("tokens", self._buckets(project).tokens)):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(bucket.limit)
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
                headers[f"x-ratelimit-reset-{name}"] = _duration(
                    bucket.seconds_until(bucket.limit))
        return headers


async def require_user_within_limits(request: Request) -> Role:
    """``UserAuth`` plus the caller's project rate limits (inference routes)."""
    role = require_user(request)
    limiter: RateLimiter = request.app.state.rate_limiter
    project = getattr(request.state, "project", "default")
    setattr(request.state, _STATE_KEY, limiter.admit(project))
    _CHARGE.set(lambda tokens: limiter.charge(project, tokens))
    return role


RateLimitedUser = Annotated[Role, Depends(require_user_within_limits)]


class RateLimitHeaders:
    """Adds the ``x-ratelimit-*`` headers a request's admission computed to its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get("state", {}).get(_STATE_KEY)
                if extra:
                    message = {**message, "headers": [
                        *message.get("headers", []),
                        *((k.encode(), v.encode()) for k, v in extra.items())]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
