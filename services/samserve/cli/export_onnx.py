"""``samserve export-onnx``: the official ONNX decoder of a model, for clients that decode
themselves (browsers, annotation tools, :class:`samserve_client.onnx.OnnxDecoder`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from samserve.cli.serve import load
from samserve.config import ModelSettings, OnnxExportSettings
from samserve.core.errors import ConfigError
from samserve.core.variants import family_of


def add_cli_args(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The command's flags: the model (as the services take it) and the export's."""
    ModelSettings.add_cli_args(parser, env)
    OnnxExportSettings.add_cli_args(parser, env)


def run(ns: argparse.Namespace) -> int:
    """Export; prints one JSON line naming the files and the model id. Returns the exit code.

    Raises:
        ConfigError: a bad flag, a SAM 2 model (no ONNX decoder for it yet), or a checkpoint
            that cannot be used.
    """
    settings = OnnxExportSettings.from_args(ns)
    model_settings = ModelSettings.from_args(ns)
    if family_of(model_settings.variant) == "sam2":
        raise ConfigError(
            f"--model: export-onnx exports SAM 1 decoders only, not {model_settings.variant}"
        )
    model = load(model_settings)
    from samserve.core import onnx_export

    out = Path(str(settings.out))
    meta = onnx_export.export(model, out, quantize=settings.quantize, opset=settings.opset)
    files = [onnx_export.DECODER_FILE, onnx_export.META_FILE]
    if settings.quantize:
        files.append(onnx_export.QUANT_FILE)
    summary = {"out": str(out), "model_id": meta["model_id"], "files": files}
    if "int8" in meta:
        summary["int8_iou_vs_fp32"] = meta["int8"]["iou_vs_fp32"]
    print(json.dumps(summary))
    return 0
