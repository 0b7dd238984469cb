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

from gateway.cli.common import settings
from gateway.cli.store import store_problem
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
                date_header=False, log_level="info", proxy_headers=False, ws="none")


def cmd_run(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.http.app import create_app
    from gateway.keys import AdminKeyError, KeyError_
    s = settings(args.config)
    workers = args.workers or s.workers
    kw = _uvicorn_kwargs(s, args)
    try:
        app = create_app(s)  # built here too with several workers: key errors surface once
    except (KeyError_, AdminKeyError) as exc:
        print(f"stepgate: {exc}", file=sys.stderr)
        return 2
    problem = asyncio.run(store_problem(s))  # a lost store refuses here, before serving
    if problem is not None:
        print(f"stepgate: {problem}", file=sys.stderr)
        return 1
    if workers > 1:
        os.environ["STEPGATE_CONFIG"] = str(s.source)
        uvicorn.run("gateway.http.app:app_from_env", factory=True, workers=workers, **kw)
        return 0
    uvicorn.run(app, **kw)
    return 0


def cmd_demo_upstream(args: argparse.Namespace) -> int:
    from gateway.cli.demo import serve
    host, _, port = args.listen.rpartition(":")
    serve(host, int(port))
    return 0


def _ensure_demo_keys() -> None:
    from gateway.keys import generate_data_key, generate_signing_key
    path = Path(DEMO_KEYS)
    if not path.exists():
        path.write_text(json.dumps({"STEPGATE_KEYS": generate_signing_key(),
                                    "STEPGATE_DATA_KEYS": generate_data_key()}) + "\n")
        path.chmod(0o600)
        print(f"stepgate demo: wrote new demo keys to {path}")
    for name, value in json.loads(path.read_text()).items():
        os.environ.setdefault(name, value)


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo upstream and the gateway in one command, on config.example.yaml."""
    _ensure_demo_keys()
    s = settings(args.config)
    # uvicorn re-raises the signal that stopped it; turning SIGTERM into SystemExit lets
    # the `finally` below stop the demo upstream too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    upstream = subprocess.Popen([sys.executable, "-m", "gateway", "demo-upstream", "--listen",
                                 s.upstream.url.split("//", 1)[1]])
    try:
        time.sleep(0.5)
        print(f"stepgate demo: upstream at {s.upstream.url}, gateway at "
              f"http://{s.listen_host}:{s.listen_port} (Ctrl-C stops both)")
        return cmd_run(args)
    finally:
        upstream.terminate()
        upstream.wait(5)
