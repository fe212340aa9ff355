"""``samserve export-onnx``: the files, the official graph's names, the checker, the int8 figure."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from samserve.cli import build_parser, main
from samserve.cli import export_onnx as command
from samserve.core import onnx_export
from samserve.core.models import load_model
from samserve_client.onnx import OnnxDecoder, decoder_inputs, read_info

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_writes_the_official_graph_with_model_json_and_int8(tmp_path, capsys) -> None:
    out = tmp_path / "onnx"
    ns = build_parser({}).parse_args(["export-onnx", "--out", str(out), "--quantize"])
    assert command.run(ns) == 0
    summary = json.loads(capsys.readouterr().out)
    model = load_model("tiny")
    assert summary["model_id"] == model.model_id
    assert sorted(p.name for p in out.iterdir()) == [
        "decoder.onnx",
        "decoder.quant.onnx",
        "model.json",
    ]
    graph = onnx.load(str(out / "decoder.onnx"))
    onnx.checker.check_model(graph)
    onnx.checker.check_model(onnx.load(str(out / "decoder.quant.onnx")))
    assert [i.name for i in graph.graph.input] == list(onnx_export.INPUT_NAMES)
    assert [o.name for o in graph.graph.output] == list(onnx_export.OUTPUT_NAMES)
    dims = {i.name: i.type.tensor_type.shape.dim for i in graph.graph.input}
    assert dims["point_coords"][1].dim_param == "num_points"
    assert dims["point_labels"][1].dim_param == "num_points"

    meta = json.loads((out / "model.json").read_text())
    assert meta["model_id"] == model.model_id
    assert meta["weights_sha256"] == model.weights_sha256
    assert meta["image_size"] == 1024
    assert "label -1" in meta["inputs"]["point_labels"]
    assert "apply_coords" in meta["inputs"]["point_coords"]
    quant = meta["int8"]["iou_vs_fp32"]
    assert 0.0 <= quant["min"] <= quant["mean"] <= 1.0
    assert summary["int8_iou_vs_fp32"] == quant
    info = read_info(out)
    assert info.model_id == model.model_id
    assert info.int8_iou == quant["mean"]


def test_any_number_of_points_runs(tmp_path) -> None:
    model = load_model("tiny", "random", seed=0)
    onnx_export.export(model, tmp_path, quantize=False)
    session = ort.InferenceSession(str(tmp_path / "decoder.onnx"))
    emb = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    for n in (1, 2, 7):
        points = np.random.default_rng(n).uniform(0, 200, (n, 2))
        masks, scores, low = session.run(None, decoder_inputs(emb, (200, 300), points))
        assert masks.shape == (1, 4, 200, 300)
        assert scores.shape == (1, 4)
        assert low.shape == (1, 4, 256, 256)
    quantized = tmp_path / "decoder.quant.onnx"
    assert not quantized.exists()
    with pytest.raises(FileNotFoundError, match="export-onnx"):
        OnnxDecoder(tmp_path, quantized=True)


def test_out_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["export-onnx"])
    assert "--out: required" in str(done.value.code)
