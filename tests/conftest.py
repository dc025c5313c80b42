"""Shared fixtures.

- ``tiny_model_dir``: a tiny random Gemma 3 checkpoint (seconds to build, for unit tests).
- ``real_model_dir``: the real prepared Gemma 3 270M (slow tests; prepared once, idempotent,
  under the real ``$TUNESERVE_HOME`` so CI and developers share it).
- ``isolated_home``: a fresh ``$TUNESERVE_HOME`` for tests that write state.
- ``docker_adapter_dir``: the real docker-commands LoRA adapter, trained once per session
  from training/configs/docker-lora.yaml (seeded; a few minutes on CPU).
- ``postgres_server``: a real PostgreSQL (tests/postgres.py), one per session.
- ``database_url``: parametrized over sqlite and postgresql: a fresh, empty database per
  test, also set as ``TUNESERVE_DATABASE_URL``, so one storage test suite runs on both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
REAL_BASE_MODEL = "gemma-3-270m"
# Where tests save artefacts a person may want to look at (screenshots, reports).
TEST_OUTPUT = REPO_ROOT / "test-output"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    from training.prepare import prepare_base_model

    return prepare_base_model(REAL_BASE_MODEL)


@pytest.fixture(scope="session")
def docker_adapter_dir(tmp_path_factory: pytest.TempPathFactory, real_model_dir: Path) -> Path:
    """Train the docker-commands LoRA adapter (training/configs/docker-lora.yaml) once.

    For local iteration only, TUNESERVE_TEST_DOCKER_ADAPTER=/path/to/adapter reuses an
    adapter trained earlier with the same config (CI leaves it unset and trains).
    """
    reuse = os.environ.get("TUNESERVE_TEST_DOCKER_ADAPTER")
    if reuse:
        return Path(reuse)
    from training.config import load_config
    from training.sft import train

    out = tmp_path_factory.mktemp("docker-adapter")
    config = load_config(REPO_ROOT / "training" / "configs" / "docker-lora.yaml", [f"output_dir={out}"])
    return train(config, progress_bar=False)


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "tuneserve-home"
    monkeypatch.setenv("TUNESERVE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def postgres_server():
    from tests.postgres import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        # CI installs the server (scripts/install-system-deps.sh): there a missing one fails.
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    from tuneserve.database import DATABASE_URL_ENV, sqlite_url

    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "tuneserve.sqlite")
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    yield url
    from tuneserve.database import dispose_engines

    dispose_engines()  # no pooled connection outlives its test's database


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder missing: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def test_output() -> Path:
    TEST_OUTPUT.mkdir(exist_ok=True)
    return TEST_OUTPUT


def pytest_configure(config: pytest.Config) -> None:
    # Never reach a model hub from tests: everything is local or built from configs.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
