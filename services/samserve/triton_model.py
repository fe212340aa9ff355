"""The SAM image encoder inside Triton Inference Server's python backend.

Every ``triton_models/sam_image_encoder_<variant>/1/model.py`` is a shim that imports
:class:`TritonPythonModel` from here; each model's ``config.pbtxt`` says what to run.

Inputs (batched by Triton's dynamic batcher, up to the config's ``max_batch_size``):
    IMAGE       UINT8 [S, S, 3]  the ``ResizeLongestSide(S)`` RGB image in the top-left corner
                                 (S = 1024 for every SAM variant); the rest is ignored
    IMAGE_SIZE  INT32 [2]        (h, w) of that image inside IMAGE, 1 <= h, w <= S
Outputs:
    EMBEDDING   FP32 or FP16 [256, 64, 64] (the config's data_type decides)
    MODEL_ID    BYTES [1]                  the identity of what made the embedding: samserve's
                                           model id of the weights this instance *loaded*
                                           (variant, checksum) and its compute dtype
                                           (``vit_h-0123456789abcdef-bf16``); the embedding
                                           service stores nothing whose id is not its own

Normalisation and padding happen here exactly as ``Sam.preprocess`` does them: normalise with
``pixel_mean``/``pixel_std``, then zeros outside (h, w), i.e. zero *after* normalisation. The
wire therefore carries 3 bytes a pixel, not 12.

Parameters (``config.pbtxt``, all strings): see :class:`EncoderParams`.

The Triton glue (:class:`TritonPythonModel`) is thin; the work is in :class:`BatchEncoder`, which
needs no Triton and is unit-tested on its own (tests/unit/test_triton_model.py).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np


class InputError(ValueError):
    """A request whose tensors cannot be encoded (answered with INVALID_ARG)."""


@dataclass(frozen=True, slots=True)
class EncoderParams:
    """The model's ``config.pbtxt`` parameters.

    Attributes:
        variant: ``tiny``, ``vit_b``, ``vit_l`` or ``vit_h``.
        checkpoint: an official ``.pth`` path; ``random`` for seeded random weights; empty for
            samserve's default (shipped weights for tiny, else random).
        seed: seed of random weights.
        device: ``cpu``, ``cuda`` or ``auto`` (the instance_group kind decides).
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (bfloat16 on cuda, float32 on
            cpu).
        python_path: extra ``sys.path`` entries, ``os.pathsep``-separated, put first (the
            backend stub ignores PYTHONPATH, so a launcher passes its own path here).
        torch_threads: intra-op threads for torch on CPU; 0 keeps torch's default.
        warmup: run one image through the encoder before reporting ready.
    """

    variant: str
    checkpoint: str = ""
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    python_path: str = ""
    torch_threads: int = 0
    warmup: bool = True

    @classmethod
    def from_config(cls, model_config: dict[str, Any]) -> EncoderParams:
        """Read the parameters of a parsed ``model_config`` (strings, possibly empty)."""
        raw = model_config.get("parameters", {})
        p = {key: str(value.get("string_value", "")).strip() for key, value in raw.items()}
        return cls(
            variant=p.get("variant", ""),
            checkpoint=p.get("checkpoint", ""),
            seed=int(p.get("seed") or 0),
            device=p.get("device") or "auto",
            dtype=p.get("dtype") or "auto",
            python_path=p.get("python_path", ""),
            torch_threads=int(p.get("torch_threads") or 0),
            warmup=(p.get("warmup") or "true").lower() == "true",
        )

    def resolve_device(self, gpu_instance: bool, device_id: str) -> str:
        """The torch device: ``cpu`` or ``cuda:<id>`` of this instance."""
        device = self.device
        if device == "auto":
            device = "cuda" if gpu_instance else "cpu"
        if device == "cuda":
            return f"cuda:{device_id}"
        if device != "cpu":
            raise ValueError(f"parameter device: {device!r} is not cpu, cuda or auto")
        return device

    def resolve_dtype(self, device: str) -> str:
        """The compute dtype's name."""
        if self.dtype == "auto":
            return "float32" if device == "cpu" else "bfloat16"
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"parameter dtype: {self.dtype!r} is not float32, bfloat16, float16")
        return self.dtype


def extend_sys_path(value: str) -> None:
    """Prepend ``value``'s entries in order, so the launcher's packages win."""
    entries = [p for p in value.split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = entries


class BatchEncoder:
    """The official image encoder over batches of padded uint8 images.

    Args:
        params: the model's parameters (variant, weights, device, dtype).
        device: a torch device string (see :meth:`EncoderParams.resolve_device`).
    """

    def __init__(self, params: EncoderParams, device: str) -> None:
        import torch

        from samserve.core.models import encoder_model_id, load_model

        if params.torch_threads > 0:
            torch.set_num_threads(params.torch_threads)
        dtype_name = params.resolve_dtype(device)
        loaded = load_model(params.variant, params.checkpoint or None, seed=params.seed)
        sam = loaded.sam
        self.model_id = encoder_model_id(loaded.variant, loaded.weights_sha256, dtype_name)
        self.source = loaded.source
        self.dtype_name = dtype_name
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype_name)
        # Only the image encoder runs here; prompt encoder and mask decoder live in samserve.
        self.encoder = sam.image_encoder.to(device=self.device, dtype=self.dtype).eval()
        self.pixel_mean = sam.pixel_mean.to(self.device)
        self.pixel_std = sam.pixel_std.to(self.device)
        self.img_size = int(sam.image_encoder.img_size)

    def check(self, image: np.ndarray, size: np.ndarray) -> None:
        """Validate one request's tensors.

        Raises:
            InputError: IMAGE is not uint8 [n, S, S, 3], IMAGE_SIZE not [n, 2] within [1, S].
        """
        s = self.img_size
        if image.dtype != np.uint8 or image.ndim != 4 or image.shape[1:] != (s, s, 3):
            raise InputError(f"IMAGE must be uint8 [n, {s}, {s}, 3], got {image.shape}")
        if size.ndim != 2 or size.shape != (image.shape[0], 2):
            raise InputError(f"IMAGE_SIZE must be int32 [n, 2], got {size.shape}")
        if (size < 1).any() or (size > s).any():
            raise InputError(f"IMAGE_SIZE (h, w) must be within [1, {s}], got {size.tolist()}")

    def encode(self, images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 and (n, 2) (h, w) -> (n, 256, 64, 64) float32 embeddings."""
        import torch

        with torch.inference_mode():
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
        return out


class TritonPythonModel:
    """Triton's python-backend interface over :class:`BatchEncoder`."""

    def initialize(self, args: dict[str, str]) -> None:
        """Build the encoder from the config parameters; raising here fails the model load."""
        config = json.loads(args["model_config"])
        params = EncoderParams.from_config(config)
        extend_sys_path(params.python_path)
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        device = params.resolve_device(
            args.get("model_instance_kind") == "GPU", args.get("model_instance_device_id", "0")
        )
        self.encoder = BatchEncoder(params, device)
        s = self.encoder.img_size
        image_dims = [int(d) for d in pb_utils.get_input_config_by_name(config, "IMAGE")["dims"]]
        if image_dims != [s, s, 3]:
            raise ValueError(
                f"input IMAGE dims {image_dims} do not match the encoder's [{s}, {s}, 3]"
            )
        out = pb_utils.get_output_config_by_name(config, "EMBEDDING")
        self.out_dtype = pb_utils.triton_string_to_numpy(out["data_type"])
        # An older config without MODEL_ID still loads; its clients then cannot check it.
        self.publish_id = pb_utils.get_output_config_by_name(config, "MODEL_ID") is not None
        pb_utils.Logger.log_info(
            f"{args['model_name']}: {self.encoder.model_id} from {self.encoder.source} "
            f"on {device} as {self.encoder.dtype_name}"
        )
        if params.warmup:
            blank = np.zeros((1, s, s, 3), np.uint8)
            self.encoder.encode(blank, np.array([[s, s]], np.int32))

    def execute(self, requests: list[Any]) -> list[Any]:
        """Encode every image of every request in one batch; errors go to their request."""
        pb = self.pb
        responses: list[Any] = [None] * len(requests)
        images, sizes, owners = [], [], []
        for i, request in enumerate(requests):
            image_t = pb.get_input_tensor_by_name(request, "IMAGE")
            size_t = pb.get_input_tensor_by_name(request, "IMAGE_SIZE")
            try:
                if image_t is None or size_t is None:
                    raise InputError("IMAGE and IMAGE_SIZE are both required")
                image, size = image_t.as_numpy(), size_t.as_numpy()
                self.encoder.check(image, size)
            except InputError as e:  # a bad request must not fail its batch-mates
                responses[i] = self._error(str(e), pb.TritonError.INVALID_ARG)
                continue
            images.append(image)
            sizes.append(size)
            owners.append((i, image.shape[0]))
        if not owners:
            return responses
        try:
            embeddings = self.encoder.encode(np.concatenate(images), np.concatenate(sizes))
        except Exception as e:  # never raise out of execute: each request gets the error
            for i, _ in owners:
                responses[i] = self._error(f"image encoder failed: {e!r}")
            return responses
        embeddings = embeddings.astype(self.out_dtype, copy=False)
        start = 0
        model_id = self.encoder.model_id.encode()
        for i, n in owners:
            tensors = [pb.Tensor("EMBEDDING", embeddings[start : start + n])]
            if self.publish_id:
                tensors.append(pb.Tensor("MODEL_ID", np.array([[model_id]] * n, dtype=np.object_)))
            responses[i] = pb.InferenceResponse(output_tensors=tensors)
            start += n
        return responses

    def finalize(self) -> None:
        """Drop the model (and its GPU memory) when Triton unloads this instance."""
        del self.encoder

    def _error(self, message: str, code: int | None = None) -> Any:
        pb = self.pb
        error = pb.TritonError(message) if code is None else pb.TritonError(message, code)
        return pb.InferenceResponse(error=error)
