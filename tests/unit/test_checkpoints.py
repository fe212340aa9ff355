"""``samserve checkpoint``: model ids equal the services', fetches verify before they install.

Fetches go through a real HTTP(S) server on loopback; the TLS case uses a certificate made by
``openssl`` for the test.
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from samserve.cli import checkpoint as checkpoints
from samserve.cli.checkpoint import main
from samserve.core.models import SHIPPED_TINY, load_model, random_sam

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> tuple[Path, str]:
    """A float32 tiny checkpoint on disk (seeded random weights) and its model id."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_random.pth"
    torch.save(random_sam("tiny", seed=3).state_dict(), path)
    return path, load_model("tiny", path).model_id


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny_other.pth"
    torch.save(random_sam("tiny", seed=4).state_dict(), path)
    return path


class _Server:
    """A loopback HTTP server for one file, counting requests; ``truncate_first`` cuts the
    first response short (a broken transfer)."""

    def __init__(self, body: bytes, *, truncate_first: bool = False) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if not self.path.startswith("/bucket/"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if truncate_first and len(outer.requests) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tiny_ckpt) -> Iterator[_Server]:
    server = _Server(tiny_ckpt[0].read_bytes())
    yield server
    server.close()


def test_model_id_equals_the_services(tiny_ckpt, capsys):
    path, expected = tiny_ckpt
    assert checkpoints.model_id(path, "tiny") == expected
    # The shipped weights are float16 on disk: the id is over the upcast float32 state dict.
    assert checkpoints.model_id(SHIPPED_TINY, "tiny") == load_model("tiny").model_id
    assert main(["id", "--model", "tiny", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == expected
    assert checkpoints.file_sha256(path) in err


def test_sam2_style_wrapped_state_dict(tiny_ckpt, tmp_path):
    path, expected = tiny_ckpt
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": torch.load(path, weights_only=True)}, wrapped)
    assert checkpoints.model_id(wrapped, "tiny") == expected


def test_verify(tiny_ckpt, other_ckpt, capsys):
    path, expected = tiny_ckpt
    assert main(["verify", str(path), "--expect-model-id", expected]) == 0
    assert main(["verify", str(other_ckpt), "--expect-model-id", expected]) == 1
    err = capsys.readouterr().err
    assert f"expected {expected}" in err and "gives model id tiny-" in err
    assert main(["verify", str(path), "--expect-model-id", "tiny-nothex"]) == 1
    assert "is not <variant>-<16 hex digits>" in capsys.readouterr().err
    assert main(["verify", "--expect-model-id", expected], env={}) == 1
    assert "PATH is required" in capsys.readouterr().err


def test_env_twins(tiny_ckpt):
    path, expected = tiny_ckpt
    env = {"SAMSERVE_CHECKPOINT": str(path), "SAMSERVE_EXPECT_MODEL_ID": expected}
    assert main(["verify"], env=env) == 0


def test_not_a_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 100)
    assert main(["verify", str(junk), "--expect-model-id", "tiny-0123456789abcdef"]) == 1
    assert "not a readable state dict" in capsys.readouterr().err
    assert main(["id", "--model", "tiny", str(tmp_path / "missing.pth")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_fetch_over_http_installs_a_verified_file(tiny_ckpt, served, tmp_path, capsys):
    path, expected = tiny_ckpt
    dest = tmp_path / "volume" / "sam_tiny.pth"
    url = f"http://127.0.0.1:{served.port}/bucket/sam_tiny.pth?X-Amz-Signature=secret123"
    args = ["fetch", "--source", url, "--dest", str(dest), "--expect-model-id", expected]
    assert main(args) == 1  # plain http is refused unless asked for
    assert "--allow-http" in capsys.readouterr().err
    assert main([*args, "--allow-http", "--sha256", checkpoints.file_sha256(path)]) == 0
    assert dest.read_bytes() == path.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o644  # other uids (Triton's) read it
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left behind
    out, err = capsys.readouterr()
    assert expected in out
    assert "secret123" not in out + err  # a presigned URL's signature is never printed
    assert len(served.requests) == 1
    # Already in place: verified, nothing downloaded.
    assert main([*args, "--allow-http"]) == 0
    assert "already holds" in capsys.readouterr().out
    assert len(served.requests) == 1


def test_fetch_refuses_wrong_weights_and_leaves_dest_alone(tiny_ckpt, other_ckpt, tmp_path, capsys):
    _, expected = tiny_ckpt
    dest = tmp_path / "sam_tiny.pth"
    args = ["fetch", "--source", str(other_ckpt), "--dest", str(dest)]
    assert main([*args, "--expect-model-id", expected]) == 1
    assert "gives model id" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # A wrong file at dest is replaced by a right one, never the other way round.
    shutil.copy(other_ckpt, dest)
    right = ["fetch", "--source", f"file://{tiny_ckpt[0]}", "--dest", str(dest)]
    assert main([*right, "--expect-model-id", expected]) == 0
    assert checkpoints.model_id(dest, "tiny") == expected


def test_fetch_sha256_mismatch(tiny_ckpt, tmp_path, capsys):
    path, expected = tiny_ckpt
    dest = tmp_path / "sam_tiny.pth"
    args = ["fetch", "--source", str(path), "--dest", str(dest), "--expect-model-id", expected]
    assert main([*args, "--sha256", "0" * 64]) == 1
    assert "file sha256" in capsys.readouterr().err
    assert not dest.exists()


def test_fetch_retries_a_broken_transfer(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints.time, "sleep", lambda s: None)
    path, expected = tiny_ckpt
    server = _Server(path.read_bytes(), truncate_first=True)
    try:
        dest = tmp_path / "sam_tiny.pth"
        url = f"http://127.0.0.1:{server.port}/bucket/sam_tiny.pth"
        args = ["fetch", "--source", url, "--dest", str(dest), "--expect-model-id", expected]
        assert main([*args, "--allow-http"]) == 0
        assert len(server.requests) == 2
    finally:
        server.close()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("s3://bucket/sam_vit_h.pth", "presigned https:// URL"),
        ("gs://bucket/sam_vit_h.pth", "presigned https:// URL"),
        ("https://huggingface.co/x/resolve/main/sam_vit_h.pth", "public model hub"),
        (
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            "public model hub",
        ),
        ("http://127.0.0.1:9/bucket/x.pth", "--allow-http"),
    ],
)
def test_fetch_refuses_sources(source, message, tmp_path, capsys):
    args = ["fetch", "--source", source, "--dest", str(tmp_path / "x.pth")]
    assert main([*args, "--expect-model-id", "vit_h-0123456789abcdef"]) == 1
    assert message in capsys.readouterr().err


def test_fetch_http_error_is_not_retried(served, tmp_path, capsys):
    url = f"http://127.0.0.1:{served.port}/elsewhere/x.pth"
    args = ["fetch", "--source", url, "--dest", str(tmp_path / "x.pth"), "--allow-http"]
    assert main([*args, "--expect-model-id", "tiny-0123456789abcdef"]) == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert len(served.requests) == 1


def test_fetch_over_https_with_a_private_ca(tiny_ckpt, tmp_path):
    """An object store behind a private CA (MinIO, an internal gateway): --ca-bundle."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found")
    import ssl

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    path, expected = tiny_ckpt
    server = _Server(path.read_bytes())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    try:
        dest = tmp_path / "sam_tiny.pth"
        url = f"https://127.0.0.1:{server.port}/bucket/sam_tiny.pth"
        args = ["fetch", "--source", url, "--dest", str(dest), "--expect-model-id", expected]
        assert main([*args, "--attempts", "1"]) == 1  # the system CAs do not know it
        assert main([*args, "--ca-bundle", str(cert)]) == 0
        assert checkpoints.model_id(dest, "tiny") == expected
    finally:
        server.close()


def test_wait_for_a_file_then_verify(tiny_ckpt, tmp_path, capsys):
    path, expected = tiny_ckpt
    dest = tmp_path / "sam_tiny.pth"

    def fill() -> None:
        time.sleep(0.5)
        tmp = tmp_path / ".partial"
        shutil.copy(path, tmp)
        tmp.rename(dest)

    filler = threading.Thread(target=fill)
    filler.start()
    try:
        args = ["wait", str(dest), "--expect-model-id", expected, "--interval", "0.1"]
        assert main([*args, "--timeout", "30"]) == 0
    finally:
        filler.join()
    assert main(["wait", str(tmp_path / "never.pth"), "--timeout", "0.3", "--interval", "0.1"]) == 1
    assert "still missing after" in capsys.readouterr().err
