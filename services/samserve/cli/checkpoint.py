"""Checkpoints for a deployment: compute a model id, verify a file, fetch one, wait for one.

``samserve checkpoint SUBCOMMAND`` (``main``). The model id is the services' identity of the
weights, ``f"{variant}-{sha256(state dict)[:16]}"`` over the float32 state dict
(``samserve.core.models.state_dict_sha256``), so a checkpoint verified here is one the services
and Triton will accept under ``--expect-model-id``.

- ``id PATH --model VARIANT``: print PATH's model id (its file sha256 goes to stderr).
- ``verify PATH --expect-model-id ID``: exit 0 when PATH gives ID, 1 otherwise.
- ``fetch --source URL --dest PATH --expect-model-id ID``: download URL next to PATH, verify
  it, then rename it into place; nothing is fetched when PATH already verifies.
- ``wait PATH [--expect-model-id ID] [--timeout S]``: wait for PATH to appear, then verify it.

Every failure is exit status 1 with a one-line reason on stderr.

Environment twins: ``SAMSERVE_CHECKPOINT`` (PATH, ``--dest``), ``SAMSERVE_EXPECT_MODEL_ID``,
``SAMSERVE_CHECKPOINT_SOURCE`` (``--source``), ``SAMSERVE_CHECKPOINT_CA_BUNDLE``.

Sources are the operator's own store, named explicitly; nothing has a default source.
``https://`` (a presigned object-store URL works: ``aws s3 presign``, ``gcloud storage
sign-url``), ``http://`` only with ``--allow-http``, and ``file://`` or a plain path (a copy
from another mount). Public model hubs are refused: mirror the file into your own store. A
source URL may carry credentials in its query string, so only scheme, host and path are ever
printed.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Public hubs: a deployment fetches from the operator's store, never from these.
HUB_HOSTS = frozenset(
    {"huggingface.co", "hf.co", "cdn-lfs.huggingface.co", "dl.fbaipublicfiles.com"}
)
_MODEL_ID = re.compile(r"^(?P<variant>.+)-(?P<digest>[0-9a-f]{16})$")
_CHUNK = 8 * 1024 * 1024


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or not the expected weights; the message says which."""


def parse_model_id(model_id: str) -> str:
    """The variant of ``model_id`` (``vit_h-0123456789abcdef`` -> ``vit_h``).

    Raises:
        CheckpointError: not ``<variant>-<16 hex digits>``.
    """
    m = _MODEL_ID.match(model_id)
    if m is None:
        raise CheckpointError(
            f"model id {model_id!r} is not <variant>-<16 hex digits> "
            "(`samserve checkpoint id --model VARIANT FILE` prints it)"
        )
    return m.group("variant")


def redact(url: str) -> str:
    """``url`` without user info, query or fragment (presigned URLs carry their signature)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class _AsFloat32(dict[str, "torch.Tensor"]):
    """A state dict whose tensors read as float32, converted one at a time on access.

    ``load_model`` upcasts every tensor before loading it, so the id is taken over float32
    values; converting lazily keeps a float16 checkpoint's peak memory at one tensor's copy.
    """

    def __getitem__(self, key: str) -> torch.Tensor:
        return super().__getitem__(key).float()


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        # mmap: the tensors stay in the page cache instead of the process heap (2.5 GB for vit_h).
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Files written before torch's zip format cannot be mapped.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable state dict ({e})") from e
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable state dict ({e})") from e
    # SAM 2 checkpoints wrap the state dict: {"model": state_dict}.
    if isinstance(state, dict) and set(state) == {"model"} and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def model_id(path: Path, variant: str) -> str:
    """The model id the services compute for ``variant`` loaded from the checkpoint ``path``.

    Raises:
        CheckpointError: the file is missing or is not a state dict.
    """
    from samserve.core.models import state_dict_sha256

    digest = state_dict_sha256(_AsFloat32(_load_state(path)))
    return f"{variant}-{digest[:16]}"


def file_sha256(path: Path) -> str:
    """Hex sha256 of the bytes of ``path``."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expect: str) -> None:
    """Check that ``path`` holds the weights of model id ``expect``.

    Raises:
        CheckpointError: missing, unreadable, or another model id (both ids named).
    """
    got = model_id(path, parse_model_id(expect))
    if got != expect:
        raise CheckpointError(f"{path} gives model id {got}, expected {expect}")


def _open_source(
    source: str, *, allow_http: bool, ca_bundle: str | None, timeout: float
) -> tuple[IO[bytes], int | None]:
    """An open byte stream of ``source`` and its length when known."""
    parts = urllib.parse.urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parts.path) if scheme == "file" else source)
        if not path.is_file():
            raise CheckpointError(f"source {path}: no such file")
        return path.open("rb"), path.stat().st_size
    if scheme not in ("https", "http"):
        raise CheckpointError(
            f"source scheme {scheme}:// is not fetched directly: give a presigned https:// URL "
            "(aws s3 presign, gcloud storage sign-url) or a file:// path"
        )
    if scheme == "http" and not allow_http:
        raise CheckpointError(f"source {redact(source)}: plain http needs --allow-http")
    host = (parts.hostname or "").lower()
    if host in HUB_HOSTS or any(host.endswith("." + h) for h in HUB_HOSTS):
        raise CheckpointError(
            f"source host {host} is a public model hub: copy the checkpoint into your own "
            "object store and fetch it from there"
        )
    context = ssl.create_default_context(cafile=ca_bundle) if scheme == "https" else None
    try:
        response = urllib.request.urlopen(source, timeout=timeout, context=context)
    except urllib.error.HTTPError as e:
        raise CheckpointError(f"source {redact(source)}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"source {redact(source)}: {reason}") from None
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def _copy(src: IO[bytes], dst: IO[bytes], expected: int | None) -> str:
    h = hashlib.sha256()
    n = 0
    while chunk := src.read(_CHUNK):
        h.update(chunk)
        dst.write(chunk)
        n += len(chunk)
    if expected is not None and n != expected:
        raise ConnectionError(f"transfer ended after {n} of {expected} bytes")
    return h.hexdigest()


def download(
    source: str,
    dest: Path,
    *,
    allow_http: bool = False,
    ca_bundle: str | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> str:
    """Stream ``source`` into ``dest`` (created or truncated), fsynced; returns its sha256.

    A broken transfer is retried from the start, up to ``attempts`` times, with backoff.

    Raises:
        CheckpointError: a source that cannot succeed (refused scheme or host, HTTP error, no
            such file) or every attempt broke.
    """
    for attempt in range(1, attempts + 1):
        try:
            src, length = _open_source(
                source, allow_http=allow_http, ca_bundle=ca_bundle, timeout=timeout
            )
            with src, dest.open("wb") as out:
                digest = _copy(src, out, length)
                out.flush()
                os.fsync(out.fileno())
            return digest
        except (ConnectionError, TimeoutError) as e:
            if attempt == attempts:
                raise CheckpointError(f"{e} (gave up after {attempts} attempts)") from None
            log.warning("%s; retrying (%d of %d)", e, attempt + 1, attempts)
            time.sleep(min(2.0**attempt, 30.0))
    raise AssertionError("unreachable")


def fetch(
    source: str,
    dest: Path,
    expect: str,
    *,
    sha256: str | None = None,
    allow_http: bool = False,
    ca_bundle: str | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> str:
    """Put the checkpoint of model id ``expect`` at ``dest``, fetched from ``source``.

    Nothing is fetched when ``dest`` already verifies. Otherwise the file is written next to
    ``dest`` under a temporary name, verified (model id, and the file's sha256 when given),
    made world-readable (pods of other uids read it) and renamed into place, so readers never
    see a partial or wrong file. Returns what happened, for the log.

    Raises:
        CheckpointError: the source failed, or its file is not the expected weights (``dest``
            is left as it was).
    """
    variant = parse_model_id(expect)
    if dest.is_file():
        got = model_id(dest, variant)
        if got == expect:
            return f"{dest}: already holds {expect}"
        log.warning("%s gives %s, expected %s: fetching it again", dest, got, expect)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        log.info("fetching %s to %s", redact(source), dest)
        digest = download(
            source,
            tmp,
            allow_http=allow_http,
            ca_bundle=ca_bundle,
            timeout=timeout,
            attempts=attempts,
        )
        if sha256 is not None and digest != sha256.lower():
            raise CheckpointError(f"{redact(source)}: file sha256 {digest}, expected {sha256}")
        got = model_id(tmp, variant)
        if got != expect:
            raise CheckpointError(f"{redact(source)} gives model id {got}, expected {expect}")
        tmp.chmod(0o644)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return f"{dest}: {expect} (file sha256 {digest}) from {redact(source)}"


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is; some NFS clients refuse O_RDONLY
    # fsync on a directory, and the close-to-open semantics cover readers there anyway.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def wait(path: Path, expect: str | None, *, timeout: float, interval: float = 5.0) -> None:
    """Wait until ``path`` exists, then verify it against ``expect`` (when given).

    Raises:
        CheckpointError: still missing after ``timeout`` seconds, or the wrong weights.
    """
    deadline = time.monotonic() + timeout
    announced = False
    while not path.is_file():
        if time.monotonic() >= deadline:
            raise CheckpointError(
                f"{path}: still missing after {timeout:.0f} s (has the checkpoint volume been "
                "filled? docs/deploy.md, 'Checkpoints')"
            )
        if not announced:
            log.info("waiting for %s", path)
            announced = True
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.0)))
    if expect:
        verify(path, expect)


def add_cli_args(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The ``checkpoint`` command's actions and flags."""
    sub = p.add_subparsers(dest="action", required=True)
    expect_default = env.get("SAMSERVE_EXPECT_MODEL_ID")

    s = sub.add_parser("id", help="print the model id of a checkpoint")
    s.add_argument("path", type=Path)
    s.add_argument("--model", required=True, help="variant: vit_b, vit_l, vit_h, tiny, ...")

    s = sub.add_parser("verify", help="check that a checkpoint gives the expected model id")
    s.add_argument("path", type=Path, nargs="?", default=env.get("SAMSERVE_CHECKPOINT"))
    s.add_argument("--expect-model-id", default=expect_default)

    s = sub.add_parser("fetch", help="download, verify and install a checkpoint")
    s.add_argument("--source", default=env.get("SAMSERVE_CHECKPOINT_SOURCE"))
    s.add_argument("--dest", type=Path, default=env.get("SAMSERVE_CHECKPOINT"))
    s.add_argument("--expect-model-id", default=expect_default)
    s.add_argument("--sha256", help="also require this sha256 of the file's bytes")
    s.add_argument("--allow-http", action="store_true", help="accept a plain http:// source")
    s.add_argument(
        "--ca-bundle",
        default=env.get("SAMSERVE_CHECKPOINT_CA_BUNDLE"),
        help="PEM file of the CAs to trust for https (default: the system's)",
    )
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")
    s.add_argument("--attempts", type=int, default=3)

    s = sub.add_parser("wait", help="wait for a checkpoint to appear, then verify it")
    s.add_argument("path", type=Path, nargs="?", default=env.get("SAMSERVE_CHECKPOINT"))
    s.add_argument("--expect-model-id", default=expect_default)
    s.add_argument("--timeout", type=float, default=1800.0)
    s.add_argument("--interval", type=float, default=5.0)


def _require(ns: argparse.Namespace, *names: str) -> None:
    for name in names:
        if not getattr(ns, name):
            flag = "--" + name.replace("_", "-") if name != "path" else "PATH"
            raise CheckpointError(f"{ns.action}: {flag} is required (or its SAMSERVE_* twin)")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """``samserve checkpoint ...`` on its own (``python -m samserve.cli.checkpoint``)."""
    parser = argparse.ArgumentParser(
        prog="samserve checkpoint", description="Fetch and verify SAM checkpoints."
    )
    add_cli_args(parser, os.environ if env is None else env)
    ns = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    return run(ns)


def run(ns: argparse.Namespace) -> int:
    """Run the parsed action: 0 on success, 1 with a one-line reason on stderr otherwise."""
    try:
        if ns.action == "id":
            print(model_id(ns.path, ns.model))
            print(f"file sha256 {file_sha256(ns.path)}", file=sys.stderr)
        elif ns.action == "verify":
            _require(ns, "path", "expect_model_id")
            verify(ns.path, ns.expect_model_id)
            print(f"{ns.path}: {ns.expect_model_id}")
        elif ns.action == "fetch":
            _require(ns, "source", "dest", "expect_model_id")
            print(
                fetch(
                    ns.source,
                    ns.dest,
                    ns.expect_model_id,
                    sha256=ns.sha256,
                    allow_http=ns.allow_http,
                    ca_bundle=ns.ca_bundle,
                    timeout=ns.timeout,
                    attempts=ns.attempts,
                )
            )
        else:
            _require(ns, "path")
            wait(ns.path, ns.expect_model_id, timeout=ns.timeout, interval=ns.interval)
            print(f"{ns.path}: {ns.expect_model_id or 'present'}")
    except CheckpointError as e:
        print(f"samserve checkpoint: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
