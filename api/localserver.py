"""Run the service as a real uvicorn process on 127.0.0.1 (end-to-end tests, benchmarks).

Position: tooling beside the service; nothing in the service imports it.

    with LocalServer(env={...}, workers=2) as srv:
        httpx.get(srv.url + "/healthz")

The server is `python -m api` in a child process on a free port of 127.0.0.1 (never another
address), started in its own process group and stopped with SIGTERM (SIGKILL after a timeout).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from types import TracebackType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class LocalServer:
    def __init__(self, env: Mapping[str, str], workers: int = 1, access_log: bool = True,
                 startup_timeout: float = 30.0):
        self.env = dict(env)
        self.workers = workers
        self.access_log = access_log
        self.startup_timeout = startup_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="screener-server-", suffix=".log",
                                                delete=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> str:
        return self._log.name

    def output(self) -> str:
        with open(self._log.name, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def start(self) -> LocalServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCREENER_")}
        env.update(self.env)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        for _attempt in range(3):
            self.port = free_port()
            cmd = [sys.executable, "-m", "api", "--host", HOST, "--port", str(self.port),
                   "--workers", str(self.workers)]
            if not self.access_log:
                cmd.append("--no-access-log")
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready():
                return self
            self.stop()
            if "address already in use" not in self.output().lower():
                break
        raise RuntimeError(f"server did not start; its output:\n{self.output()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        return False

    def signal(self, sig: int) -> None:
        """Send a signal to the server process (the uvicorn supervisor with several workers)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the group we started: the server and its workers
            p.wait(5)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass
