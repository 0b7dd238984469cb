"""The container as shipped (docker/README.md), without a Docker engine: the Dockerfile is
parsed, and the image's /app is rebuilt in a temporary folder from what the Dockerfile
copies, then started the way the image starts it (its ENTRYPOINT and CMD, its ENV)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT, free_port, wait_ready

DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


def arguments(rest: str) -> list[str]:
    """An instruction's arguments in JSON (exec) form or shell form."""
    return list(json.loads(rest)) if rest.startswith("[") else shlex.split(rest)


def last(name: str) -> str:
    found = [rest for word, rest in instructions() if word == name]
    assert found, f"the Dockerfile has no {name}"
    return found[-1]


def workdir() -> str:
    return last("WORKDIR")


def copies() -> list[tuple[list[str], str]]:
    """(sources relative to the build context, destination in the image) of every COPY."""
    out = []
    for word, rest in instructions():
        if word in ("COPY", "ADD"):
            args = [a for a in arguments(rest) if not a.startswith("--")]
            *sources, dest = args
            if not dest.startswith("/"):
                dest = f"{workdir()}/{dest}"
            out.append((sources, dest))
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [s.strip().strip("/") for s in lines if s.strip() and not s.startswith("#")]


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (or a folder above it) out of the build context;
    the last matching pattern decides, as in Docker."""
    parts = path.strip("/").split("/")
    verdict = False
    for pattern in dockerignore():
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatchcase(prefix, pattern[3:])):
                verdict = not negated
                break
    return verdict


def test_every_copied_path_is_in_the_build_context() -> None:
    sources = [s for sources, _ in copies() for s in sources]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.parametrize("path", [".venv", ".git", "gateway/__pycache__", ".pytest_cache",
                                  ".mypy_cache", ".ruff_cache", "tests", "stepgate.db",
                                  "data/stepgate.db-wal", "stepgate-demo.keys", "data/admin.key"])
def test_dockerignore_keeps_local_state_out(path: str) -> None:
    assert ignored(path)


def test_runs_as_a_user_that_is_not_root() -> None:
    user = last("USER").split(":")[0]
    assert user not in ("root", "0")
    words = [word for word, _ in instructions()]
    # Nothing after the USER line runs as root again.
    assert words.index("USER") > max((i for i, w in enumerate(words) if w == "RUN"), default=-1)


def test_has_a_healthcheck() -> None:
    health = last("HEALTHCHECK")
    assert re.search(r"\bCMD\b", health) and not health.upper().startswith("NONE")


def test_installs_the_pinned_versions() -> None:
    runs = [rest for word, rest in instructions() if word == "RUN" and "pip install" in rest]
    assert runs and all(re.search(r"(-c|--constraint)\s+constraints\.txt\b", r) for r in runs)
    copied = [s for sources, _ in copies() for s in sources]
    assert "constraints.txt" in copied


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: expected NAME==VERSION, found {line!r}"
            out[canonicalize_name(name)] = version
    return out


def runtime_closure() -> set[str]:
    """Every distribution ``pip install .`` brings in on this platform, by the installed
    packages' own metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(r), "") for r in distribution("stepgate").requires or []]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = distribution(req.name).requires or []
        except PackageNotFoundError:
            continue
        for raw in requires:
            for wanted in req.extras or {""}:
                todo.append((Requirement(raw), wanted))
    return {name for name, _ in seen}


def test_constraints_pin_every_runtime_dependency() -> None:
    pinned = pins()
    missing = runtime_closure() - set(pinned)
    assert not missing, f"constraints.txt lacks {sorted(missing)}: refresh it (its header)"
    for raw in distribution("stepgate").requires or []:
        req = Requirement(raw)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            version = pinned[canonicalize_name(req.name)]
            assert req.specifier.contains(version, prereleases=True), \
                f"constraints.txt pins {req.name}=={version}, outside pyproject's {req.specifier}"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The image's WORKDIR, rebuilt from the Dockerfile's COPY lines."""
    root = tmp_path / "app"
    for sources, dest in copies():
        assert dest.startswith(workdir()), f"COPY to {dest}, outside {workdir()}"
        target = root / dest[len(workdir()):].lstrip("/")
        for source in sources:
            src = ROOT / source
            into = target / src.name if dest.endswith("/") or len(sources) > 1 else target
            into.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, into)
    return root


def in_app(value: str, app: Path) -> str:
    """A path in the image, moved to the rebuilt WORKDIR."""
    prefix = workdir().rstrip("/") + "/"
    return str(app / value[len(prefix):]) if value.startswith(prefix) else value


def container_env(app: Path, **overrides: str) -> dict[str, str]:
    """Only what the image sets, with this interpreter's folder first on PATH (where the
    image has its `python` and `stepgate`) and its PYTHONPATH, if any."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}",
           "HOME": str(app), "LANG": "C.UTF-8"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update({k: in_app(v, app) for k, v in image_env().items()})
    env.update(overrides)
    return env


def command(app: Path, *args: str) -> list[str]:
    """ENTRYPOINT followed by ``args``, or by CMD when there are none."""
    entry = [in_app(a, app) for a in arguments(last("ENTRYPOINT"))]
    return entry + (list(args) or arguments(last("CMD")))


def test_the_default_configuration_passes_check(app: Path) -> None:
    env = container_env(app)
    config = env["STEPGATE_CONFIG"]
    r = subprocess.run(command(app, sys.executable, "-m", "gateway", "check", "--config", config),
                       cwd=app, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("signing.keys", "data.keys", "admin.key"):
        key = app / "data" / name
        assert key.stat().st_mode & 0o077 == 0, f"{key} is readable by others"


def test_keys_given_as_variables_are_not_written(app: Path) -> None:
    from gateway.keys import generate_data_key, generate_signing_key
    env = container_env(app, STEPGATE_KEYS=generate_signing_key(),
                        STEPGATE_DATA_KEYS=generate_data_key(),
                        STEPGATE_ADMIN_KEY=generate_signing_key())
    r = subprocess.run(command(app, "stepgate", "check"), cwd=app, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in (app / "data").iterdir()) == []


def healthcheck() -> list[str]:
    _, _, rest = last("HEALTHCHECK").partition("CMD")
    rest = rest.strip()
    return arguments(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.e2e
def test_the_default_command_serves_and_passes_its_healthcheck(app: Path) -> None:
    port, demo = free_port(), free_port()
    env = container_env(app, STEPGATE_LISTEN=f"127.0.0.1:{port}",
                        STEPGATE_DEMO_UPSTREAM=f"127.0.0.1:{demo}")
    log = (app / "container.log").open("wb")
    proc = subprocess.Popen(command(app), cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/.stepgate/config")
        wait_ready(proc, f"http://127.0.0.1:{demo}/public/hello")
        health = subprocess.run(healthcheck(), env=env, capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stderr
        # A stop signal to the entrypoint (PID 1 in the container) stops both servers.
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        assert refused(port) and refused(demo)
    finally:
        if proc.poll() is None or not (refused(port) and refused(demo)):
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the entrypoint's session: it and its servers
            except ProcessLookupError:
                pass
            proc.wait(5)
        log.close()
