"""SAM 2 / 2.1 image models: built with the official ``sam2`` package from its bundled configs.

Weights come from an official ``.pt`` checkpoint (``{"model": state_dict}``) at a path the
operator gives; nothing is ever downloaded. Without one, a model gets deterministic random
weights from a seed, with the same loud warning as SAM 1.

``sam2_tiny`` is hiera_t's config with a narrower (32 wide), five-block trunk: the test-size
architecture (random weights only; its encoder is about 3x faster than hiera_t's).
"""

from __future__ import annotations

from typing import Any

import torch

from samserve.core.errors import InvalidInput
from samserve.core.variants import SAM2_CONFIGS

#: hydra overrides that shrink hiera_t to ``sam2_tiny``: 1, 1, 2 and 1 blocks per stage,
#: global attention in the third stage's second block (a pooling block cannot be global), a
#: trunk 32 wide instead of 96 (the neck's inputs follow).
_TINY_OVERRIDES = [
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.embed_dim=32",
    "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]",
]


def build_sam2_model(variant: str) -> Any:
    """An untrained official ``SAM2Base`` for ``variant`` (eval mode, CPU, float32).

    It is built exactly as ``sam2.build_sam.build_sam2(config, ckpt_path=None, device="cpu")``
    builds it (the image predictor's post-processing settings included), so a reference
    ``SAM2ImagePredictor`` over the same weights is the same model.
    """
    if variant not in SAM2_CONFIGS:
        raise InvalidInput(f"unknown SAM 2 model {variant!r}; known: {', '.join(SAM2_CONFIGS)}")
    try:
        from sam2.build_sam import build_sam2
    except ImportError as e:  # the optional dependency
        raise InvalidInput(
            f"model {variant} needs the official sam2 package: "
            "SAM2_BUILD_CUDA=0 pip install 'samserve[sam2]'"
        ) from e
    extra = _TINY_OVERRIDES if variant == "sam2_tiny" else []
    return build_sam2(
        SAM2_CONFIGS[variant], ckpt_path=None, device="cpu", hydra_overrides_extra=extra
    )


def random_sam2(variant: str, seed: int) -> Any:
    """``variant`` with deterministic random weights drawn from ``seed`` (the caller's random
    state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_sam2_model(variant)


def unwrap_state(state: dict[str, Any], path: object) -> dict[str, torch.Tensor]:
    """The state dict of an official SAM 2 checkpoint (``{"model": state_dict}``; a bare state
    dict is accepted too).

    Raises:
        InvalidInput: not a state dict of tensors.
    """
    if set(state) == {"model"} and isinstance(state["model"], dict):
        state = state["model"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInput(f"checkpoint {path} is not a state dict of tensors")
    return state
