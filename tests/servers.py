"""Real PostgreSQL and Redis servers for the tests, started on loopback once per test
process and stopped at its end.

    from tests.servers import postgres, redis
    url = postgres().new_database()      # postgresql://postgres@127.0.0.1:P/db_3
    hot = redis().url(db=0)              # redis://127.0.0.1:P/0

Both servers come from the system's packages; when one is missing and the tests run as
root on Debian, it is installed with apt-get (a few seconds each), so the README's test
command needs nothing else. PostgreSQL refuses to run as root: initdb and postgres run as
the ``postgres`` user in a folder it owns. Each server can be stopped, started again on
the same port with its data, or paused with SIGSTOP (a server that stops answering) to
test how the gateway fails closed and recovers.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

_lock = threading.Lock()
_apt_updated = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _apt_install(package: str) -> None:
    global _apt_updated
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{package} is not installed and cannot be installed here "
                           f"(not root, or no apt-get): apt-get install {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env,
                       capture_output=True, timeout=600)
        _apt_updated = True
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                   check=True, env=env, capture_output=True, timeout=900)


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


class _Server:
    proc: subprocess.Popen[bytes] | None = None
    port: int
    name = "server"

    def _command(self) -> tuple[list[str], dict[str, object]]:
        raise NotImplementedError

    def _ready(self) -> None:
        assert self.proc is not None
        _wait_port(self.port, self.proc, self.name)

    def start(self) -> None:
        """Start (again) on the same port, with the data it had."""
        if self.proc is not None and self.proc.poll() is None:
            return
        cmd, kw = self._command()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     **kw)  # type: ignore[call-overload]
        self._ready()

    def stop(self) -> None:
        """Stop the server (its data stays; ``start`` brings it back)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused server must be able to hear the stop
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP to the server and every process it started (PostgreSQL serves each
        connection from a child): it keeps its connections open and stops answering."""
        self._signal(self._pids(), signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(self._pids(), signal.SIGCONT)

    def pause_main(self) -> None:
        """SIGSTOP to the main process only (PostgreSQL: new connections hang after the TCP
        handshake, open ones are still served)."""
        assert self.proc is not None
        self._signal([self.proc.pid], signal.SIGSTOP)

    def resume_main(self) -> None:
        assert self.proc is not None
        self._signal([self.proc.pid], signal.SIGCONT)

    @staticmethod
    def _signal(pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # a connection's process that ended meanwhile

    def _pids(self) -> list[int]:
        assert self.proc is not None
        pids, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            todo.extend(int(c) for c in children)
        return pids


class PostgresServer(_Server):
    name = "postgres"

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not bins:
            _apt_install("postgresql")
            bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="stepgate-pg-"))
        self.port = free_port()
        self._as: dict[str, object] = {}
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = {"user": "postgres", "group": "postgres", "extra_groups": []}
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                        "--auth=trust", "--locale=C", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120, **self._as)  # type: ignore[call-overload]
        self._numbers = itertools.count(1)
        self.start()

    def _command(self) -> tuple[list[str], dict[str, object]]:
        return ([str(self.bin / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
                 "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=400"], dict(self._as))

    def _ready(self) -> None:
        super()._ready()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p",
                                str(self.port), "-U", "postgres"], capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not become ready")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL."""
        name = name or f"db_{next(self._numbers)}"
        subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", name], check=True, capture_output=True, timeout=60)
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        r = subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "-d", database, "-At", "-c", sql],
                           check=True, capture_output=True, text=True, timeout=60)
        return r.stdout


class RedisServer(_Server):
    name = "redis-server"

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            _apt_install("redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix="stepgate-redis-"))
        self.port = free_port()
        self.start()

    def _command(self) -> tuple[list[str], dict[str, object]]:
        # No persistence, as many deployments run it: a restart forgets everything.
        return (["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir), "--databases", "64"], {})

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


_servers: dict[str, _Server] = {}


def _get(kind: str, make: type[_Server]) -> _Server:
    with _lock:
        server = _servers.get(kind)
        if server is None:
            server = _servers[kind] = make()
            atexit.register(server.stop)
        elif server.proc is None or server.proc.poll() is not None:
            server.start()  # a test stopped it and failed before starting it again
        return server


def postgres() -> PostgresServer:
    server = _get("postgres", PostgresServer)
    assert isinstance(server, PostgresServer)
    return server


def redis() -> RedisServer:
    server = _get("redis", RedisServer)
    assert isinstance(server, RedisServer)
    return server


# ---------------------------------------------------------------------- ingresses

DOCS = Path(__file__).resolve().parent.parent / "docs" / "forward-auth.md"


def documented(name: str) -> str:
    """The configuration docs/forward-auth.md marks ``<!-- tested: name -->``: the tests
    run exactly what the documentation tells operators to paste."""
    text = DOCS.read_text()
    marker = f"<!-- tested: {name} -->\n"
    start = text.index(marker) + len(marker)
    fence_end = text.index("\n", start)
    return text[fence_end + 1: text.index("\n```", fence_end)] + "\n"


def _placed(config: str, gateway: int, api: int) -> str:
    return config.replace("127.0.0.1:8080", f"127.0.0.1:{gateway}").replace(
        "127.0.0.1:9000", f"127.0.0.1:{api}")


class NginxIngress(_Server):
    """nginx with the documented ``auth_request`` server block, in front of a gateway and
    an API on loopback."""

    name = "nginx"

    def __init__(self, gateway: int, api: int, secret: str) -> None:
        if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
            _apt_install("nginx-light")
        self.dir = Path(tempfile.mkdtemp(prefix="stepgate-nginx-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        block = _placed(documented("nginx"), gateway, api).replace(
            "listen 80;", f"listen 127.0.0.1:{self.port};").replace(
            "replace-with-the-forward-secret", secret)
        d = self.dir
        (d / "conf").write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
{block}
}}
""")
        self.start()

    def _command(self) -> tuple[list[str], dict[str, object]]:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        return [binary, "-c", str(self.dir / "conf"), "-p", str(self.dir)], {}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # nginx: graceful stop
        super().stop()


class CaddyIngress(_Server):
    """Caddy with the documented ``forward_auth`` Caddyfile, plain HTTP on loopback."""

    name = "caddy"

    def __init__(self, gateway: int, api: int, secret: str) -> None:
        if shutil.which("caddy") is None:
            _apt_install("caddy")
        self.dir = Path(tempfile.mkdtemp(prefix="stepgate-caddy-"))
        self.port = free_port()
        self.secret = secret
        site = _placed(documented("caddy"), gateway, api).replace(
            "api.example.com {", f"http://127.0.0.1:{self.port} {{", 1)
        (self.dir / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n\n" + site)
        self.start()

    def _command(self) -> tuple[list[str], dict[str, object]]:
        env = dict(os.environ, STEPGATE_FORWARD_SECRET=self.secret, HOME=str(self.dir),
                   XDG_DATA_HOME=str(self.dir), XDG_CONFIG_HOME=str(self.dir))
        return (["caddy", "run", "--config", str(self.dir / "Caddyfile"), "--adapter",
                 "caddyfile"], {"env": env, "cwd": str(self.dir)})
