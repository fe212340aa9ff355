"""How many CPUs this process may use: the pod's CPU limit (cgroup), not the host's cores.

A container sees every core of its node in ``os.cpu_count()``, but Kubernetes enforces its CPU
limit as a CFS quota: ``cpu.max`` (cgroup v2, ``"QUOTA PERIOD"`` or ``"max PERIOD"``) or
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (cgroup v1, quota -1 for none). Sizing thread pools
from the host's count on a 2-CPU pod of a 64-core node oversubscribes it 32 times over. The
decoder sizes its workers and intra-op threads from :func:`available_cpus`; the functions take the
filesystem root so tests can hand them fake files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line (None when unlimited or unreadable)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (None: none)."""
    try:
        quota, period = int(quota_text), int(period_text)
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _own_paths(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and cgroup v1 ``cpu`` controller path, from
    ``/proc/self/cgroup`` (``"0::/path"``, ``"N:cpu,cpuacct:/path"``)."""
    text = _read(proc_cgroup) or ""
    v2: str | None = None
    v1: str | None = None
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _candidates(base: Path, own: str | None) -> list[Path]:
    """The process's own cgroup directory first (when visible), then the mount's root (inside a
    container's cgroup namespace, the root is the container's own group)."""
    out = []
    if own and own.strip("/"):
        out.append(base / own.strip("/"))
    out.append(base)
    return out


def cgroup_cpu_limit(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The CPU limit of this process's cgroup, in CPUs (e.g. 2.0, 0.5), or None when unlimited.

    Reads cgroup v2 (``ROOT/cpu.max``) first, then v1 (``ROOT/cpu/cpu.cfs_quota_us``, also under
    ``cpu,cpuacct``), looking in the process's own group before the mount's root.
    """
    v2, v1 = _own_paths(proc_cgroup)
    for directory in _candidates(root, v2):
        text = _read(directory / "cpu.max")
        if text is not None:
            return parse_cpu_max(text)
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for directory in _candidates(root / mount, v1):
            quota = _read(directory / "cpu.cfs_quota_us")
            period = _read(directory / "cpu.cfs_period_us")
            if quota is not None and period is not None:
                return parse_cfs(quota, period)
    return None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_cpus(
    root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_SELF_CGROUP,
    affinity: int | None = None,
) -> int:
    """Whole CPUs this process may use: the cgroup limit rounded up, capped by the CPUs it may
    run on (``sched_getaffinity``: cpusets), at least 1."""
    cores = affinity if affinity is not None else _affinity()
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cores = min(cores, math.ceil(limit - 1e-9))
    return max(1, cores)


@dataclass(frozen=True, slots=True)
class DecoderThreads:
    """How the decoder uses its CPUs: ``workers`` calls at once, each on ``intra_op`` threads
    (0: adaptive, ``cpus`` divided by the calls running at that moment)."""

    workers: int
    intra_op: int
    cpus: int


def decoder_threads(workers: int, intra_op: int, cpus: int) -> DecoderThreads:
    """Resolve the decoder's settings for ``cpus`` CPUs: workers 0 means one per CPU (small
    matrices scale better across calls than inside one); threads pass through (the settings'
    default is 0, adaptive threads: a lone call gets every CPU, a full pool one each).
    """
    return DecoderThreads(workers if workers > 0 else cpus, max(0, intra_op), cpus)
