"""The SAM 2 / 2.1 image encoder inside Triton Inference Server's python backend.

Every ``triton_models/sam_image_encoder_sam2*/1/model.py`` is a shim that imports
:class:`TritonPythonModel` from here; each model's ``config.pbtxt`` says what to run (the same
parameters as SAM 1's models: :class:`samserve.triton_model.EncoderParams`).

Input (batched by Triton's dynamic batcher, up to the config's ``max_batch_size``):
    IMAGE       FP32 [3, S, S]  the RGB image as ``SAM2Transforms`` leaves it *before*
                                ``Normalize``: ``ToTensor`` (0..1) then ``Resize((S, S))``
                                (S = ``model.image_size``, 1024 for every variant). The client
                                (:class:`samserve.core.triton_encoder.Sam2TritonEncoder`) does
                                that float resize, so the official transform is kept exactly.
Outputs (FP32 or FP16, each config's data_type decides):
    IMAGE_EMBED  [256, 64, 64]   ``SAM2ImagePredictor._features["image_embed"]``
    HIGH_RES_0   [32, 256, 256]  ``_features["high_res_feats"][0]``
    HIGH_RES_1   [64, 128, 128]  ``_features["high_res_feats"][1]``

Here the image is normalised with ``SAM2Transforms``' mean and std, then the backbone runs
(``forward_image`` + ``_prepare_backbone_features`` + ``no_mem_embed``), exactly as
``SAM2ImagePredictor.set_image_batch`` does.

The Triton glue is thin; the work is in :class:`Sam2BatchEncoder`, which needs no Triton and is
unit-tested on its own (tests/unit/test_triton_model_sam2.py).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from samserve.triton_model import EncoderParams, InputError, extend_sys_path

#: ``SAM2Transforms``' normalisation (ImageNet mean and std, on 0..1 values).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
#: The outputs, in the order :meth:`Sam2BatchEncoder.encode` returns them.
OUTPUTS = ("IMAGE_EMBED", "HIGH_RES_0", "HIGH_RES_1")
#: Spatial sizes of the backbone's three levels, finest first (``SAM2ImagePredictor``).
_BB_FEAT_SIZES = ((256, 256), (128, 128), (64, 64))


class Sam2BatchEncoder:
    """The official SAM 2 backbone over batches of resized float images.

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
        if loaded.family != "sam2":
            raise ValueError(f"parameter variant: {params.variant} is not a SAM 2 model")
        self.model_id = encoder_model_id(loaded.variant, loaded.weights_sha256, dtype_name)
        self.source = loaded.source
        self.dtype_name = dtype_name
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype_name)
        # forward_image runs the image encoder and the mask decoder's conv_s0/conv_s1.
        self.model = loaded.sam.to(device=self.device, dtype=self.dtype).eval()
        self.img_size = int(self.model.image_size)
        self.mean = torch.tensor(PIXEL_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(PIXEL_STD, device=self.device).view(1, 3, 1, 1)

    def check(self, image: np.ndarray) -> None:
        """Validate one request's tensor.

        Raises:
            InputError: IMAGE is not float32 [n, 3, S, S] with finite values.
        """
        s = self.img_size
        if image.dtype != np.float32 or image.ndim != 4 or image.shape[1:] != (3, s, s):
            raise InputError(f"IMAGE must be float32 [n, 3, {s}, {s}], got {image.shape}")
        if not np.isfinite(image).all():
            raise InputError("IMAGE has values that are not finite")

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, 3, S, S) float32 -> the (n, 256, 64, 64) embeddings and the (n, 32, 256, 256)
        and (n, 64, 128, 128) high-resolution maps, float32."""
        import torch

        model = self.model
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            # Normalize as torchvision does it: (x - mean) / std, in float32.
            x = (x - self.mean) / self.std
            backbone_out = model.forward_image(x.to(self.dtype))
            _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
            if model.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
            n = x.shape[0]
            feats = [
                feat.permute(1, 2, 0).reshape(n, -1, *size)
                for feat, size in zip(vision_feats[::-1], _BB_FEAT_SIZES[::-1], strict=True)
            ][::-1]
            embed, high0, high1 = (f.float().cpu().numpy() for f in (feats[-1], feats[0], feats[1]))
        return embed, high0, high1


class TritonPythonModel:
    """Triton's python-backend interface over :class:`Sam2BatchEncoder`."""

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
        self.encoder = Sam2BatchEncoder(params, device)
        s = self.encoder.img_size
        image_dims = [int(d) for d in pb_utils.get_input_config_by_name(config, "IMAGE")["dims"]]
        if image_dims != [3, s, s]:
            raise ValueError(
                f"input IMAGE dims {image_dims} do not match the encoder's [3, {s}, {s}]"
            )
        self.out_dtypes = [
            pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, name)["data_type"]
            )
            for name in OUTPUTS
        ]
        # As SAM 1's model: MODEL_ID (weights and compute dtype) goes with every answer.
        self.publish_id = pb_utils.get_output_config_by_name(config, "MODEL_ID") is not None
        pb_utils.Logger.log_info(
            f"{args['model_name']}: {self.encoder.model_id} from {self.encoder.source} "
            f"on {device} as {self.encoder.dtype_name}"
        )
        if params.warmup:
            self.encoder.encode(np.zeros((1, 3, s, s), np.float32))

    def execute(self, requests: list[Any]) -> list[Any]:
        """Encode every image of every request in one batch; errors go to their request."""
        pb = self.pb
        responses: list[Any] = [None] * len(requests)
        images, owners = [], []
        for i, request in enumerate(requests):
            image_t = pb.get_input_tensor_by_name(request, "IMAGE")
            try:
                if image_t is None:
                    raise InputError("IMAGE is required")
                image = image_t.as_numpy()
                self.encoder.check(image)
            except InputError as e:  # a bad request must not fail its batch-mates
                responses[i] = self._error(str(e), pb.TritonError.INVALID_ARG)
                continue
            images.append(image)
            owners.append((i, image.shape[0]))
        if not owners:
            return responses
        try:
            outputs = self.encoder.encode(np.concatenate(images))
        except Exception as e:  # never raise out of execute: each request gets the error
            for i, _ in owners:
                responses[i] = self._error(f"image encoder failed: {e!r}")
            return responses
        cast = [a.astype(t, copy=False) for a, t in zip(outputs, self.out_dtypes, strict=True)]
        start = 0
        model_id = self.encoder.model_id.encode()
        for i, n in owners:
            tensors = [
                pb.Tensor(name, np.ascontiguousarray(a[start : start + n]))
                for name, a in zip(OUTPUTS, cast, strict=True)
            ]
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
