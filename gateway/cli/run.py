"""``stepgate run`` serves the gateway; ``stepgate demo`` and ``stepgate demo-upstream`` run
it in front of the demo bank API (README.md, Two commands)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import KEYS_FILE_ENV, USAGE, config_path, keys_file, report, shown
from gateway.cli.preflight import preflight
from gateway.cli.store import check_store
from gateway.config.load import check_settings
from gateway.config.settings import Settings

DEMO_KEYS = "stepgate-demo.keys"


def _uvicorn_kwargs(s: Settings, args: argparse.Namespace) -> dict[str, Any]:
    host, port = s.listen_host, s.listen_port
    if getattr(args, "listen", None):
        host, _, p = args.listen.rpartition(":")
        port = int(p)
    from gateway.http.server import GatewayHttpProtocol
    return dict(host=host, port=port, loop="uvloop", http=GatewayHttpProtocol, lifespan="on",
                access_log=bool(getattr(args, "access_log", False)), server_header=False,
                date_header=False, log_level="info", proxy_headers=False, ws="none",
                timeout_graceful_shutdown=s.shutdown_grace)


def log_to_stderr() -> None:
    """The gateway's own messages (reloads, store trouble) on standard error, beside the
    server's."""
    import logging
    logger = logging.getLogger("stepgate")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     stepgate: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve_workers(kw: dict[str, Any], workers: int) -> None:
    """uvicorn's supervisor of ``workers`` processes, except that SIGHUP is passed on to
    every worker, each of which reloads its configuration (uvicorn's own would restart them
    all, and a broken configuration would then stop the service)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            for process in self.processes:
                pid = process.pid
                if pid is not None:
                    os.kill(pid, signal.SIGHUP)

    config = uvicorn.Config("gateway.cli.run:worker_app", factory=True, workers=workers, **kw)
    Supervisor(config, sockets=[config.bind_socket()]).run()


def worker_app() -> Any:
    """Factory for server processes when there are several: the configuration named by
    STEPGATE_CONFIG and the keys ``run`` was told to read (STEPGATE_KEYS_FILE)."""
    from gateway.config.load import load_settings
    from gateway.http.app import create_app
    from gateway.keys import KeyRing
    log_to_stderr()
    s = load_settings(os.environ["STEPGATE_CONFIG"])
    file = os.environ.get(KEYS_FILE_ENV)
    return create_app(s, keys=KeyRing.from_settings(s.keys, Path(file) if file else None),
                      serving=True)


def cmd_run(args: argparse.Namespace) -> int:
    """Refuse, exit 2, on what ``stepgate check`` reports; exit 1 when the store does not
    answer; otherwise serve until stopped."""
    import uvicorn

    from gateway.http.app import create_app
    checked = check_settings(config_path(args.config))
    found = preflight(checked, keys_file(args))
    problems = [*checked.errors, *found.problems]
    if problems or checked.settings is None or found.keys is None:
        report(problems, found.hints)
        return USAGE
    s = checked.settings
    workers = args.workers or s.workers
    kw = _uvicorn_kwargs(s, args)
    m = s.metrics.listen
    if m is not None and m[1] == kw["port"] and (m[0] == kw["host"] or
                                                 "0.0.0.0" in (m[0], kw["host"])):  # noqa: S104
        report([f"--listen: expected another address than metrics.listen (metrics are never "
                f"on the public port), found {kw['host']}:{kw['port']}"])
        return USAGE
    log_to_stderr()
    app = create_app(s, keys=found.keys, serving=True)
    asyncio.run(check_store(s, args))  # migrations, and a store that does not answer
    from gateway.metrics import serve
    serve(s, workers)  # the metrics listener, in this process (the parent of any workers)
    if workers > 1:
        os.environ["STEPGATE_CONFIG"] = str(s.source)
        file = keys_file(args)
        if file is not None:
            os.environ[KEYS_FILE_ENV] = str(file.resolve())
        serve_workers(kw, workers)
        return 0
    uvicorn.run(app, **kw)
    return 0


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from gateway.cli.demo import serve
    host, _, port = args.listen.rpartition(":")
    serve(host, int(port))
    return 0


def _convert_json_keys(path: Path) -> None:
    """Earlier demos wrote their keys as JSON; rewritten as a keys file (same keys, so what
    was enrolled with them still opens)."""
    from gateway.keys import DATA_NAME, SIGNING_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
            lines = f"{SIGNING_NAME}={doc[SIGNING_NAME]}\n{DATA_NAME}={doc[DATA_NAME]}\n"
        except (ValueError, KeyError, TypeError):
            return  # not what a demo wrote: reading it will say what is wrong
        path.write_text(lines, encoding="utf-8")


def ensure_demo_keys(s: Settings, args: argparse.Namespace) -> None:
    """Create the keys the demo's configuration names when they are not there yet: the
    configured keys file (config.example.yaml names stepgate-demo.keys, so every command
    given that configuration finds them), or, for a configuration that names no file and
    whose variables are unset, stepgate-demo.keys here, passed on as --keys-file."""
    from gateway.keys import KeyError_, KeyRing, keys_file_text
    for path in {s.keys.file, s.keys.data_file, Path(DEMO_KEYS)} - {None}:
        assert path is not None
        _convert_json_keys(path)
    try:
        KeyRing.from_settings(s.keys, keys_file(args))
        return
    except KeyError_ as exc:
        missing = list(dict.fromkeys(exc.unreadable))
        if not missing and exc.unset and keys_file(args) is None and s.keys.file is None:
            args.keys_file = DEMO_KEYS
            if not Path(DEMO_KEYS).exists():
                missing = [Path(DEMO_KEYS)]
            print(f"stepgate demo: other commands read the demo keys with --keys-file "
                  f"{DEMO_KEYS}")
    for path in missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(keys_file_text())
        print(f"stepgate demo: wrote new demo keys to {shown(path)}")


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo upstream and the gateway in one command, on config.example.yaml."""
    checked = check_settings(config_path(args.config))
    if checked.settings is None:
        report(checked.errors)
        return USAGE
    s = checked.settings
    ensure_demo_keys(s, args)
    # uvicorn re-raises the signal that stopped it; turning SIGTERM into SystemExit lets
    # the `finally` below stop the demo upstream too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    upstream = subprocess.Popen([sys.executable, "-m", "gateway", "demo-upstream", "--listen",
                                 s.upstream.url.split("//", 1)[1]])
    try:
        time.sleep(0.5)
        host, port = s.listen_host, s.listen_port
        if getattr(args, "listen", None):
            host, _, p = args.listen.rpartition(":")
            port = int(p)
        print(f"stepgate demo: upstream at {s.upstream.url}, gateway at "
              f"http://{host}:{port} (Ctrl-C stops both)")
        return cmd_run(args)
    finally:
        upstream.terminate()
        upstream.wait(5)
