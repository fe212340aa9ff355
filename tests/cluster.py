"""Test helper: a real local Redis Cluster of three masters (no replicas).

Each node's cluster bus listens on its port + 10000, so ports are drawn below 55536 with both
the port and its bus port free.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from samserve.procs.common import dies_with_parent


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int) -> list[int]:
    """``n`` ports below 55536 whose bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        p = random.randint(20000, 45000)
        if p not in ports and _free(p) and _free(p + 10000):
            ports.append(p)
    return ports


@dataclass
class RedisClusterProcs:
    """Three cluster-enabled redis-servers joined into one cluster."""

    folder: Path
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The samserve URL naming one seed node."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self, masters: int = 3) -> RedisClusterProcs:
        try:
            return self._start(masters)
        except BaseException:
            self.stop()
            raise

    def _start(self, masters: int) -> RedisClusterProcs:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is missing"
        self.ports = cluster_ports(masters)
        for port in self.ports:
            node = self.folder / str(port)
            node.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    dies_with_parent(
                        [binary, "--port", str(port), "--bind", "127.0.0.1",
                         "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--dir", str(node), "--save", "", "--appendonly", "no",
                         "--loglevel", "warning"]
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in self.ports:
            _wait_ping(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        for port in self.ports:
            while True:
                node = redis.Redis(port=port)
                info = node.cluster("info")
                node.close()
                if info.get("cluster_state") == "ok":
                    break
                assert time.monotonic() < deadline, f"cluster not ok: {info}"
                time.sleep(0.1)
        return self

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.ports[0])

    def flush(self) -> None:
        for port in self.ports:
            r = redis.Redis(port=port)
            r.flushall()
            r.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ping(port: int, timeout: float = 10.0) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                time.sleep(0.05)
    finally:
        client.close()
