"""A private, non-persistent redis-server child (``samserve up`` and the tests)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from samserve.procs.common import dies_with_parent, free_port

log = logging.getLogger(__name__)


@dataclass
class RedisProcess:
    """A private, non-persistent redis-server on loopback."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(
        cls,
        port: int = 0,
        *,
        timeout: float = 10.0,
        attempts: int = 3,
        extra_args: Sequence[str] = (),
    ) -> RedisProcess:
        """Start redis-server (port 0 picks a free one) and wait until it answers PING.

        ``extra_args`` are more redis-server options (later ones win, e.g. ``--appendonly
        yes --dir D`` for a persistent one in tests).
        """
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
                dies_with_parent(
                    [binary, "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning",
                     *extra_args]
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
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
