"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from tests.unit.service_app import Server


@pytest.fixture
def server_factory(tiny_model_dir, isolated_home, monkeypatch):
    """``make(engine_kw=None, **settings)``: a :class:`Server` (closed after the test)."""
    monkeypatch.setenv("TUNESERVE_UI", "0")
    servers: list[Server] = []

    def make(**kw) -> Server:
        servers.append(Server(tiny_model_dir, **kw))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
