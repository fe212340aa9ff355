"""Child processes of ``samserve up`` (a private redis-server) and free-port helpers."""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for children that cannot bind port 0 themselves)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed `up` leaves no orphan."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class RedisProcess:
    """A private, non-persistent redis-server on loopback."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, port: int = 0, *, timeout: float = 10.0, attempts: int = 3) -> RedisProcess:
        """Start redis-server (port 0 picks a free one) and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: install it (apt-get install redis-server) "
                "or pass --redis-url to use a running Redis"
            )
        last: Exception | None = None
        for _ in range(attempts):
            p = port or free_port()
            proc = subprocess.Popen(
                [binary, "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
            try:
                _wait_for_redis(proc, p, timeout)
                log.info("redis-server on 127.0.0.1:%d (pid %d)", p, proc.pid)
                return cls(proc, p)
            except RuntimeError as e:  # lost a race for the port: try another
                last = e
                proc.kill()
                proc.wait()
                if port:
                    break
        raise RuntimeError(f"could not start redis-server: {last}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the child."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def _wait_for_redis(proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    client = redis.Redis(
        port=port, socket_connect_timeout=0.2, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"redis-server exited: {err.strip()}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer in time")
    finally:
        client.close()
