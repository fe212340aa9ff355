"""Triton python backend: the official ``segment_anything`` image encoder, in torch.

One file serves every variant; each ``sam_image_encoder_<variant>/1/model.py`` is a link to
this one and the model's ``config.pbtxt`` says what to run.

Inputs (batched by Triton's dynamic batcher, up to the config's ``max_batch_size``):
    IMAGE       UINT8 [S, S, 3]  the ``ResizeLongestSide(S)`` RGB image in the top-left corner
                                 (S = 1024 for every SAM variant); the rest is ignored
    IMAGE_SIZE  INT32 [2]        (h, w) of that image inside IMAGE, 1 <= h, w <= S
Output:
    EMBEDDING   FP32 or FP16 [256, 64, 64] (the config's data_type decides)

Normalisation and padding happen here exactly as ``Sam.preprocess`` does them: normalise with
``pixel_mean``/``pixel_std``, then zeros outside (h, w), i.e. zero *after* normalisation. The
wire therefore carries 3 bytes a pixel, not 12.

Parameters (``config.pbtxt``, all strings):
    variant        tiny | vit_b | vit_l | vit_h
    checkpoint     path to an official ``.pth`` state dict; ``random`` for seeded random
                   weights; empty for samserve's default (shipped weights for tiny, else random)
    seed           seed for random weights (default 0)
    device         cpu | cuda | auto (auto: the instance_group kind decides)
    dtype          float32 | bfloat16 | float16 | auto (auto: bfloat16 on cuda, float32 on cpu)
    python_path    extra ``sys.path`` entries, ``os.pathsep``-separated, put first; the backend
                   stub ignores PYTHONPATH, so a launcher passes its own path here
    torch_threads  intra-op threads for torch on CPU; 0 keeps torch's default
    warmup         true | false: run one image through the encoder before reporting ready
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class InputError(ValueError):
    """A request whose tensors cannot be encoded (answered with INVALID_ARG)."""


def _params(model_config: dict[str, Any]) -> dict[str, str]:
    raw = model_config.get("parameters", {})
    return {key: str(value.get("string_value", "")).strip() for key, value in raw.items()}


def _extend_sys_path(value: str) -> None:
    # Prepend in the given order so the launcher's packages win over anything the stub found.
    entries = [p for p in value.split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = entries


class TritonPythonModel:
    """The SAM image encoder for one model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        """Build the model from the config parameters; raising here fails the model load."""
        config = json.loads(args["model_config"])
        params = _params(config)
        _extend_sys_path(params.get("python_path", ""))

        # Imported only now: torch and samserve may live on the python_path given above.
        import torch

        from samserve.core.models import load_model

        self.torch = torch
        threads = int(params.get("torch_threads") or 0)
        if threads > 0:
            torch.set_num_threads(threads)

        gpu_instance = args.get("model_instance_kind") == "GPU"
        device = params.get("device") or "auto"
        if device == "auto":
            device = "cuda" if gpu_instance else "cpu"
        if device == "cuda":
            device = f"cuda:{args.get('model_instance_device_id', '0')}"
        elif device != "cpu":
            raise ValueError(f"parameter device: {device!r} is not cpu, cuda or auto")
        dtype_name = params.get("dtype") or "auto"
        if dtype_name == "auto":
            dtype_name = "float32" if device == "cpu" else "bfloat16"
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype_name not in dtypes:
            raise ValueError(f"parameter dtype: {dtype_name!r} is not one of {sorted(dtypes)}")

        variant = params.get("variant", "")
        checkpoint = params.get("checkpoint") or None
        loaded = load_model(variant, checkpoint, seed=int(params.get("seed") or 0))
        sam = loaded.sam
        self.device = torch.device(device)
        self.dtype = dtypes[dtype_name]
        # Only the image encoder runs here; prompt encoder and mask decoder live in samserve.
        self.encoder = sam.image_encoder.to(device=self.device, dtype=self.dtype).eval()
        self.pixel_mean = sam.pixel_mean.to(self.device)
        self.pixel_std = sam.pixel_std.to(self.device)
        self.img_size = int(sam.image_encoder.img_size)

        image_dims = [int(d) for d in pb_utils.get_input_config_by_name(config, "IMAGE")["dims"]]
        if image_dims != [self.img_size, self.img_size, 3]:
            raise ValueError(
                f"input IMAGE dims {image_dims} do not match the encoder's "
                f"[{self.img_size}, {self.img_size}, 3]"
            )
        out = pb_utils.get_output_config_by_name(config, "EMBEDDING")
        self.out_dtype = pb_utils.triton_string_to_numpy(out["data_type"])

        pb_utils.Logger.log_info(
            f"{args['model_name']}: {loaded.model_id} from {loaded.source} "
            f"on {self.device} as {dtype_name}"
        )
        if params.get("warmup", "true").lower() == "true":
            blank = np.zeros((1, self.img_size, self.img_size, 3), np.uint8)
            self._encode(blank, np.array([[self.img_size, self.img_size]], np.int32))

    def execute(self, requests: list[Any]) -> list[Any]:
        """Encode every image of every request in one batch; errors go to their request."""
        responses: list[Any] = [None] * len(requests)
        images, sizes, owners = [], [], []
        for i, request in enumerate(requests):
            try:
                image, size = self._read(request)
            except Exception as e:  # a bad request must not fail its batch-mates
                responses[i] = self._error(f"{e}", pb_utils.TritonError.INVALID_ARG)
                continue
            images.append(image)
            sizes.append(size)
            owners.append((i, image.shape[0]))
        if not owners:
            return responses
        try:
            embeddings = self._encode(np.concatenate(images), np.concatenate(sizes))
        except Exception as e:  # never raise out of execute: each request gets the error
            for i, _ in owners:
                responses[i] = self._error(f"image encoder failed: {e!r}")
            return responses
        start = 0
        for i, n in owners:
            tensor = pb_utils.Tensor("EMBEDDING", embeddings[start : start + n])
            responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
            start += n
        return responses

    def finalize(self) -> None:
        """Drop the model (and its GPU memory) when Triton unloads this instance."""
        del self.encoder

    def _read(self, request: Any) -> tuple[np.ndarray, np.ndarray]:
        image_t = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        size_t = pb_utils.get_input_tensor_by_name(request, "IMAGE_SIZE")
        if image_t is None or size_t is None:
            raise InputError("IMAGE and IMAGE_SIZE are both required")
        image, size = image_t.as_numpy(), size_t.as_numpy()
        s = self.img_size
        if image.dtype != np.uint8 or image.ndim != 4 or image.shape[1:] != (s, s, 3):
            raise InputError(f"IMAGE must be uint8 [n, {s}, {s}, 3], got {image.shape}")
        if size.ndim != 2 or size.shape != (image.shape[0], 2):
            raise InputError(f"IMAGE_SIZE must be int32 [n, 2], got {size.shape}")
        if (size < 1).any() or (size > s).any():
            raise InputError(f"IMAGE_SIZE (h, w) must be within [1, {s}], got {size.tolist()}")
        return image, size

    def _encode(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 and (n, 2) int32 (h, w) -> (n, 256, 64, 64) embeddings."""
        torch = self.torch
        with torch.inference_mode():
            # np.concatenate made a writable copy, so torch can share its memory.
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            x = x.permute(0, 3, 1, 2).float()
            x = (x - self.pixel_mean) / self.pixel_std
            hw = torch.from_numpy(sizes.astype(np.int64)).to(self.device)
            idx = torch.arange(self.img_size, device=self.device)
            rows = idx[None, :] < hw[:, 0:1]  # (n, S)
            cols = idx[None, :] < hw[:, 1:2]  # (n, S)
            inside = (rows[:, :, None] & cols[:, None, :])[:, None]  # (n, 1, S, S)
            # Sam.preprocess pads with zeros after normalising; where() keeps that exact.
            x = torch.where(inside, x, torch.zeros((), device=self.device))
            features = self.encoder(x.to(self.dtype))
            out: np.ndarray = features.float().cpu().numpy()
        return out.astype(self.out_dtype, copy=False)

    @staticmethod
    def _error(message: str, code: int | None = None) -> Any:
        error = (
            pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
        )
        return pb_utils.InferenceResponse(error=error)
