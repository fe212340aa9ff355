"""``samserve web``'s HTTP API over a real stack: embed, segment (== the SDK), the embedding
tensor, static files, and a 4xx with a JSON error for every bad input."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from samserve_client import web
from samserve_client.web import rle
from samserve_client.web.server import WebServer
from tests.conftest import png_bytes
from tests.stack import StackThread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _ns(stack: StackThread, **overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    web.add_cli_args(parser, {})
    ns = parser.parse_args(
        ["--embedding", stack.embedding_address, "--decoder", stack.decoder_address, "--port", "0"]
    )
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


@pytest.fixture
def page(stack: StackThread) -> Iterator[tuple[str, StackThread]]:
    ns = _ns(stack, max_image_bytes=200_000)
    client = web.open_client(ns)
    server = web.build_server(ns, client).start()
    yield server.url, stack
    server.close()
    client.close()


def _call(url: str, body: bytes | None = None, kind: str = "application/json"):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _post_json(url: str, payload: object) -> tuple[int, dict]:
    status, _, body = _call(url, json.dumps(payload).encode())
    return status, json.loads(body)


def test_embed_then_segment_equals_the_sdk(page, shapes_rgb) -> None:
    url, stack = page
    data = png_bytes(shapes_rgb)
    status, _, body = _call(url + "api/embed", data, "application/octet-stream")
    assert status == 200
    embedded = json.loads(body)
    assert embedded["width"] == 320 and embedded["height"] == 240
    assert embedded["cached"] is False
    query = {"image_id": embedded["image_id"], "points": [[100.5, 80, 1], [20, 20, 0]]}
    for multimask in (False, True):
        status, answer = _post_json(url + "api/segment", {**query, "multimask": multimask})
        assert status == 200
        with stack.client() as client:
            expected = client.segment(
                data, points=[[100.5, 80], [20, 20]], labels=[1, 0], multimask_output=multimask
            )
        assert len(answer["masks"]) == len(expected.masks) == (3 if multimask else 1)
        for got, mask in zip(answer["masks"], expected.masks, strict=True):
            assert got["size"] == [240, 320]
            np.testing.assert_array_equal(rle.decode(got), mask)
            np.testing.assert_array_equal(coco_mask.decode({**got, "counts": got["counts"]}), mask)
        np.testing.assert_allclose(answer["scores"], expected.scores, atol=1e-6)
    box = {"image_id": embedded["image_id"], "points": [], "box": [10, 10, 200, 200]}
    assert _post_json(url + "api/segment", box)[0] == 200
    status, _, body = _call(url + "api/embed", data, "application/octet-stream")
    assert json.loads(body)["cached"] is True


def test_embedding_tensor_for_the_browser(page, shapes_rgb) -> None:
    url, _ = page
    _, _, body = _call(url + "api/embed", png_bytes(shapes_rgb), "application/octet-stream")
    image_id = json.loads(body)["image_id"]
    status, headers, raw = _call(url + f"api/embedding/{image_id}")
    assert status == 200
    assert headers["X-Samserve-Dtype"] == "float16"
    assert headers["X-Samserve-Shape"] == "1,256,64,64"
    assert (headers["X-Samserve-Height"], headers["X-Samserve-Width"]) == ("240", "320")
    assert headers["X-Samserve-Model-Id"].startswith("tiny-")
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert len(raw) == 256 * 64 * 64 * 2
    assert _call(url + f"api/embedding/{'0' * 64}")[0] == 404


def test_static_files_and_config(page) -> None:
    url, _ = page
    status, headers, body = _call(url)
    assert status == 200 and b'id="image"' in body
    assert headers["Content-Type"].startswith("text/html")
    assert _call(url + "static/app.js")[1]["Content-Type"].startswith("text/javascript")
    assert _call(url + "static/../api.py")[0] == 404
    assert _call(url + "static/%2e%2e/api.py")[0] == 404
    assert _call(url + "decoder/model.json")[0] == 404
    config = json.loads(_call(url + "api/config")[2])
    assert config["browser"] is False
    assert (
        "decoder" in config["browser_unavailable"] or "onnxruntime" in config["browser_unavailable"]
    )


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"image_id": "nope", "points": [[1, 2, 1]]}, 400, "image_id"),
        ({"image_id": "a" * 64, "points": []}, 400, "points"),
        ({"image_id": "a" * 64, "points": [[1, 2]]}, 400, "points[0]"),
        ({"image_id": "a" * 64, "points": [[1, "x", 1]]}, 400, "points[0][1]"),
        ({"image_id": "a" * 64, "points": [[1, 2, 7]]}, 400, "label"),
        ({"image_id": "a" * 64, "box": [1, 2, 3]}, 400, "box"),
        ({"image_id": "a" * 64, "points": [[1, 2, 1]], "multimask": "yes"}, 400, "multimask"),
        ({"image_id": "a" * 64, "points": [[1, 2, 1]]}, 404, "no embedding"),
        ([1, 2], 400, "object"),
    ],
)
def test_bad_segment_requests(page, payload, status, field) -> None:
    url, _ = page
    got, body = _post_json(url + "api/segment", payload)
    assert got == status
    assert field in body["error"]


def test_bad_uploads(page) -> None:
    url, _ = page
    status, _, body = _call(url + "api/embed", b"not an image", "application/octet-stream")
    assert status == 400 and "image" in json.loads(body)["error"]
    status, _, body = _call(url + "api/embed", b"", "application/octet-stream")
    assert status == 400
    status, _, body = _call(url + "api/embed", b"x" * 200_001, "application/octet-stream")
    assert status == 413 and "limit" in json.loads(body)["error"]
    status, _, body = _call(url + "api/segment", b"{not json")
    assert status == 400 and "JSON" in json.loads(body)["error"]
    assert _call(url + "api/nothing", b"{}")[0] == 404


def test_services_down_is_503(tmp_path: Path, stack: StackThread, shapes_rgb) -> None:
    ns = _ns(stack, embedding="127.0.0.1:1", timeout=5.0)
    client = web.open_client(ns)
    server: WebServer = web.build_server(ns, client).start()
    try:
        status, _, body = _call(
            server.url + "api/embed", png_bytes(shapes_rgb), "application/octet-stream"
        )
    finally:
        server.close()
        client.close()
    assert status == 503
    assert json.loads(body)["error"]


def test_tls_flags_are_checked(stack: StackThread, tmp_path: Path) -> None:
    with pytest.raises(web.UsageError, match="no such file"):
        web.open_client(_ns(stack, tls_ca=tmp_path / "missing.pem"))
    token = tmp_path / "token"
    token.write_text("two words\n")
    with pytest.raises(web.UsageError, match="one token"):
        web.open_client(_ns(stack, token_file=token))


def test_the_command_serves_until_sigterm(stack: StackThread) -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "samserve", "web", "--port", "0",
         "--embedding", stack.embedding_address, "--decoder", stack.decoder_address],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["web"]
        assert _call(url)[0] == 200
        assert json.loads(_call(url + "api/config")[2])["browser"] is False
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def test_environment_twins(capsys) -> None:
    parser = argparse.ArgumentParser()
    web.add_cli_args(parser, {"SAMSERVE_WEB_PORT": "9999", "SAMSERVE_WEB_ONNX_DIR": "/x"})
    ns = parser.parse_args([])
    assert ns.port == 9999 and ns.onnx_dir == Path("/x")
    assert parser.parse_args(["--port", "1"]).port == 1
    parser = argparse.ArgumentParser()
    web.add_cli_args(parser, {"SAMSERVE_WEB_PORT": "eighty"})
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "--port" in capsys.readouterr().err
