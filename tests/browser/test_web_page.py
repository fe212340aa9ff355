"""The page in headless Chromium (Debian's build, driven by playwright), in both decode modes.

Upload an image, click on a shape, Shift-click the background; the prompt must carry the
original-image coordinates of the clicked pixels (within 1 px, though the image is displayed
scaled), and the drawn mask must be the SDK's answer. Screenshots land in out/screenshots/
(printed), for a person to look at.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from samserve.core import onnx_export
from samserve.core.models import LoadedModel
from samserve_client import EmbeddingRef, SamClient
from samserve_client.web import rle
from samserve_client.web.server import STATIC_DIR
from tests.browser.chromium import CHROMIUM, launch
from tests.browser.page import PageServer
from tests.conftest import png_bytes
from tests.parity.test_predict_parity import iou
from tests.stack import StackThread
from tools.shapes import make_shapes_image

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing (make setup)"),
]

ARTEFACTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"
#: Larger than the page shows it: clicks are scaled from displayed to image pixels.
HEIGHT, WIDTH = 750, 1000


@dataclass
class Setup:
    stack: StackThread
    client: SamClient
    server: PageServer
    image: Path
    masks: np.ndarray


@pytest.fixture(scope="module")
def setup(redis_server, tmp_path_factory) -> Iterator[Setup]:
    from samserve.core.models import load_model

    model: LoadedModel = load_model("tiny")
    out = tmp_path_factory.mktemp("web")
    onnx_export.export(model, out / "onnx", quantize=False)
    sample = make_shapes_image(seed=3, height=HEIGHT, width=WIDTH)
    image = out / "shapes.png"
    image.write_bytes(png_bytes(sample.image))
    stack = StackThread(model, redis_server.url).start()
    client = stack.client(timeout=60)
    server = PageServer(stack, onnx_dir=out / "onnx").start()
    yield Setup(stack, client, server, image, sample.masks)
    server.close()
    client.close()
    stack.close()


def _center(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    order = np.lexsort((xs, ys))
    k = len(xs) // 2
    return float(xs[order][k]), float(ys[order][k])


def _background(masks: np.ndarray) -> tuple[float, float]:
    empty = ~masks.any(axis=0)
    ys, xs = np.nonzero(empty[40:-40, 40:-40])
    return float(xs[0] + 40), float(ys[0] + 40)


def _screen(page, x: float, y: float) -> tuple[float, float]:
    """Where pixel (x, y)'s centre is displayed."""
    box = page.locator("#image").bounding_box()
    return (
        box["x"] + (x + 0.5) * box["width"] / WIDTH,
        box["y"] + (y + 0.5) * box["height"] / HEIGHT,
    )


def _wait_seq(page, n: int) -> dict:
    page.wait_for_function(f"window.samserve.seq >= {n}", timeout=60_000)
    return page.evaluate("window.samserve.last")


def _drawn_mask(page) -> np.ndarray:
    """The overlay canvas's pixels that carry the mask's fill or outline, (H, W) bool."""
    data = page.evaluate(
        """() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const out = new Array(c.width * c.height);
        for (let i = 0; i < out.length; i++) out[i] = [115, 230].includes(d[4 * i + 3]) ? 1 : 0;
        return out; }"""
    )
    return np.array(data, dtype=bool).reshape(HEIGHT, WIDTH)


def _open(page, s: Setup, mode: str) -> None:
    page.goto(f"{s.server.url}?decode={mode}")
    page.wait_for_function("window.samserve.mode !== null")
    page.set_input_files("#file", str(s.image))
    page.wait_for_function("window.samserve.ready", timeout=60_000)
    assert page.evaluate("window.samserve.mode") == mode
    assert page.evaluate("window.samserve.error") is None


@pytest.mark.parametrize("mode", ["browser", "server"])
def test_click_then_shift_click(setup: Setup, mode: str) -> None:
    if mode == "browser" and not (STATIC_DIR / "vendor" / "ort.wasm.min.js").is_file():
        pytest.skip("onnxruntime-web is not installed (make setup copies it)")
    requests: list[dict] = []
    with launch() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on(
            "request",
            lambda r: (
                requests.append(json.loads(r.post_data or "{}"))
                if r.url.endswith("/api/segment")
                else None
            ),
        )
        _open(page, setup, mode)
        shown = page.locator("#image").bounding_box()
        assert shown["width"] < WIDTH, "the image should be displayed scaled"

        fg = _center(setup.masks[0])
        page.mouse.click(*_screen(page, *fg))
        first = _wait_seq(page, 1)
        bg = _background(setup.masks)
        page.keyboard.down("Shift")
        page.mouse.click(*_screen(page, *bg))
        page.keyboard.up("Shift")
        last = _wait_seq(page, 2)
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTEFACTS / f"web-{mode}.png"
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        latency = page.locator("#latency").inner_text()
        drawn = _drawn_mask(page)

    assert first["mode"] == last["mode"] == mode
    assert "ms" in latency and mode in latency
    expected = [[fg[0], fg[1], 1], [bg[0], bg[1], 0]]
    sent = [r["points"] for r in requests] if mode == "server" else []
    for got in [last["points"], *sent[-1:]]:
        assert len(got) == 2
        for (x, y, label), (ex, ey, el) in zip(got, expected, strict=True):
            assert label == el
            assert abs(x - (ex + 0.5)) <= 1.0 and abs(y - (ey + 0.5)) <= 1.0
    if mode == "server":
        assert len(requests) == 2 and requests[-1]["box"] is None

    ref = EmbeddingRef(setup.client.embed(setup.image).image_id, True, "", 0, 0)
    sdk = setup.client.segment(
        ref,
        points=[p[:2] for p in last["points"]],
        labels=[p[2] for p in last["points"]],
        multimask_output=False,
    )
    page_mask = rle.decode(last["masks"][last["best"]])
    assert abs(last["scores"][0] - float(sdk.scores[0])) <= 1e-3
    assert iou(page_mask, sdk.masks[0]) >= 0.995
    assert sdk.masks[0].sum() > 500, "the click should land on a shape"
    # The overlay shows that mask (the two point marks cover a few of its pixels).
    assert iou(drawn, sdk.masks[0]) >= 0.98


def test_box_multimask_undo_reset_and_downloads(setup: Setup, tmp_path: Path) -> None:
    with launch() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        _open(page, setup, "server")
        ys, xs = np.nonzero(setup.masks[1])
        x0, y0, x1, y1 = xs.min() - 4, ys.min() - 4, xs.max() + 4, ys.max() + 4
        page.mouse.move(*_screen(page, x0, y0))
        page.mouse.down()
        page.mouse.move(*_screen(page, (x0 + x1) / 2, (y0 + y1) / 2), steps=4)
        page.mouse.move(*_screen(page, x1, y1), steps=4)
        page.mouse.up()
        boxed = _wait_seq(page, 1)
        assert boxed["points"] == []
        for got, want in zip(boxed["box"], [x0, y0, x1, y1], strict=True):
            assert abs(got - (want + 0.5)) <= 1.0
        ref = EmbeddingRef(page.evaluate("window.samserve.imageId"), True, "", 0, 0)
        sdk = setup.client.segment(ref, box=boxed["box"], multimask_output=False)
        np.testing.assert_array_equal(rle.decode(boxed["masks"][0]), sdk.masks[0])

        page.mouse.click(*_screen(page, *_center(setup.masks[1])), button="right")
        assert _wait_seq(page, 2)["points"][0][2] == 0
        page.check("#multimask")
        multi = _wait_seq(page, 3)
        assert len(multi["masks"]) == len(multi["scores"]) == 3
        assert page.locator("#choices button").count() == 3
        page.locator("#choices button").nth(0).click()
        assert page.evaluate("window.samserve.last.best") == 0

        with page.expect_download() as png:
            page.click("#download-png")
        with page.expect_download() as coco:
            page.click("#download-coco")
        saved = tmp_path / "mask.png"
        png.value.save_as(saved)
        coco_json = json.loads(Path(coco.value.path()).read_text())
        ann = coco_json["annotations"][0]
        assert ann["segmentation"] == multi["masks"][0]
        assert ann["area"] == int(rle.decode(ann["segmentation"]).sum())
        from PIL import Image

        png_mask = np.asarray(Image.open(saved).convert("L")) > 127
        np.testing.assert_array_equal(png_mask, rle.decode(multi["masks"][0]))

        page.click("#undo")
        undone = _wait_seq(page, 4)
        assert undone["points"] == [] and undone["box"] is not None
        page.click("#reset")
        reset = _wait_seq(page, 5)
        assert reset["points"] == [] and reset["box"] is None and reset["masks"] == []
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTEFACTS / "web-reset.png"))


def test_server_mode_without_onnxruntime(setup: Setup, monkeypatch) -> None:
    """No vendor files: the page still decodes, on the server, by default."""
    monkeypatch.setattr(setup.server.api, "vendor_dir", Path("/nonexistent"))
    with launch() as browser:
        page = browser.new_page()
        page.goto(setup.server.url)
        page.wait_for_function("window.samserve.mode !== null")
        assert page.evaluate("window.samserve.mode") == "server"
        page.goto(setup.server.url + "?decode=browser")
        page.wait_for_function("window.samserve.error !== null")
        assert "onnxruntime-web" in page.evaluate("window.samserve.error")
