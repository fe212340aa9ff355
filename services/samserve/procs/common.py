"""What every child process samserve starts needs: a free port, and dying with its parent."""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Sequence


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for children that cannot bind port 0 themselves)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def dies_with_parent(args: Sequence[str]) -> list[str]:
    """``args`` run so that the child gets SIGTERM when this process dies (no orphans).

    ``setpriv --pdeathsig`` (util-linux, present wherever Linux is) sets the parent-death signal
    and execs the command. It is used instead of a ``preexec_fn``: running Python between fork
    and exec in a process whose gRPC threads are busy can crash the child (gRPC skips its fork
    handlers then), and without ``preexec_fn`` Python spawns with vfork, which is also faster.
    Elsewhere the command runs as it is.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    if setpriv is None:
        return list(args)
    return [setpriv, "--pdeathsig", "TERM", "--", *args]
