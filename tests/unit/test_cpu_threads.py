"""The default CPU thread binding handed to vLLM's engine processes."""

from __future__ import annotations

import pytest

from service.cpu_threads import BIND_ENV, apply_threads_bind, default_threads_bind


@pytest.mark.parametrize(("cpus", "bind"), [
    ({0, 1}, "0,1"),        # 2 CPUs: compute on both (measured 1.25-1.6x vLLM's auto)
    ({3, 5}, "3,5"),        # the CPUs this process may use, not 0..n-1
    ({0}, "auto"),          # one CPU: nothing to choose
    (set(range(8)), "auto"),  # larger machines keep vLLM's auto
])
def test_default_threads_bind(cpus, bind):
    assert default_threads_bind(cpus) == bind


def test_environment_then_setting_then_default(monkeypatch):
    monkeypatch.setenv(BIND_ENV, "0-7")
    assert apply_threads_bind("nobind") == "0-7"  # an explicit vLLM variable wins
    monkeypatch.delenv(BIND_ENV)
    assert apply_threads_bind("nobind") == "nobind"
    monkeypatch.delenv(BIND_ENV)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    assert apply_threads_bind(None) == "0,1"
