"""The decoder's CPUs come from the pod's cgroup CPU limit (fake cgroup files), not the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from samserve.core.cpus import (
    available_cpus,
    cgroup_cpu_limit,
    decoder_threads,
    parse_cfs,
    parse_cpu_max,
)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("200000 100000", 2.0), ("50000 100000", 0.5), ("max 100000", None), ("150000", 1.5),
     ("", None), ("garbage 100000", None), ("0 100000", None)],
)  # fmt: skip
def test_parse_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_parse_cfs() -> None:
    assert parse_cfs("400000", "100000") == 4.0
    assert parse_cfs("-1", "100000") is None
    assert parse_cfs("x", "100000") is None


def test_cgroup_v2_own_group_first(tmp_path: Path) -> None:
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/kubepods/pod1/ctr\n")
    _write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    _write(tmp_path / "cg" / "kubepods/pod1/ctr" / "cpu.max", "250000 100000\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) == 2.5
    assert available_cpus(tmp_path / "cg", proc, affinity=64) == 3


def test_cgroup_v2_namespace_root(tmp_path: Path) -> None:
    """Inside a cgroup namespace the process sees '/' and its limit at the mount's root."""
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/\n")
    _write(tmp_path / "cg" / "cpu.max", "200000 100000\n")
    assert available_cpus(tmp_path / "cg", proc, affinity=64) == 2


def test_cgroup_v1(tmp_path: Path) -> None:
    proc = tmp_path / "proc_cgroup"
    _write(proc, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    base = tmp_path / "cg" / "cpu,cpuacct"
    _write(base / "cpu.cfs_quota_us", "-1\n")
    _write(base / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path / "cg", proc) is None
    _write(base / "docker/abc/cpu.cfs_quota_us", "100000\n")
    _write(base / "docker/abc/cpu.cfs_period_us", "100000\n")
    assert available_cpus(tmp_path / "cg", proc, affinity=64) == 1


def test_no_limit_uses_affinity(tmp_path: Path) -> None:
    """No cgroup files (or no limit): the CPUs the process may run on; a limit never raises it."""
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "none") is None
    assert available_cpus(tmp_path / "none", tmp_path / "none", affinity=6) == 6
    _write(tmp_path / "cg" / "cpu.max", "800000 100000\n")
    assert available_cpus(tmp_path / "cg", tmp_path / "none", affinity=2) == 2
    _write(tmp_path / "cg" / "cpu.max", "10000 100000\n")
    assert available_cpus(tmp_path / "cg", tmp_path / "none", affinity=2) == 1


@pytest.mark.parametrize(
    ("workers", "threads", "cpus", "expected"),
    [(0, 0, 2, (2, 0)), (0, 0, 8, (8, 0)), (1, 0, 4, (1, 0)), (3, 1, 2, (3, 1)),
     (0, 2, 4, (4, 2)), (2, 3, 16, (2, 3))],
)  # fmt: skip
def test_decoder_threads(workers: int, threads: int, cpus: int, expected: tuple[int, int]) -> None:
    """Workers default to the CPUs; threads stay 0 (adaptive) unless given."""
    got = decoder_threads(workers, threads, cpus)
    assert (got.workers, got.intra_op, got.cpus) == (*expected, cpus)
