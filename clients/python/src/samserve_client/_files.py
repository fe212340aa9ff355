"""Crash-safe file writes, shared by the SDK's commands and the server."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old file or all of the new one.

    The bytes go to a fresh temporary file in the same folder (created with O_EXCL, so
    concurrent writers never share one), are fsynced, and the file is renamed over ``path``;
    the folder is fsynced after the rename so the new name survives a power cut. A failure
    leaves ``path`` as it was and no temporary file behind.

    Args:
        path: the file to write; its folder must exist.
        data: the whole content.
        mode: permission bits of the new file (mkstemp's 0o600 otherwise).
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
