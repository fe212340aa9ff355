"""A throwaway PKI for TLS tests (trustme): CA, server and client certificates as files."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Pki:
    """Files of one test PKI: a CA, the servers' certificate, clients' certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path
    expired_cert: Path
    expired_key: Path


def _write(cert: trustme.LeafCert, folder: Path, name: str) -> tuple[Path, Path]:
    crt, key = folder / f"{name}.pem", folder / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(crt), append=True)
    cert.private_key_pem.write_to_path(str(key))
    return crt, key


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, and clients' certificates (one of
    another CA, one expired), written as PEM files in ``folder``."""
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    return Pki(
        folder / "ca.pem",
        *_write(ca.issue_cert("127.0.0.1", "localhost"), folder, "server"),
        *_write(ca.issue_cert("client@samserve.test"), folder, "client"),
        folder / "other-ca.pem",
        *_write(other.issue_cert("client@samserve.test"), folder, "other-client"),
        *_write(
            ca.issue_cert("old@samserve.test", not_before=past - datetime.timedelta(days=1),
                          not_after=past),
            folder, "expired",
        ),
    )  # fmt: skip


def token_file(folder: Path, text: str) -> Path:
    """A token file as the server wants it (not world-readable)."""
    path = folder / "tokens"
    path.write_text(text)
    path.chmod(0o600)
    return path
