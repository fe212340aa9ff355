"""Model registry: SAM variants built with the official ``segment_anything`` builders.

A variant is one of ``vit_b``, ``vit_l``, ``vit_h`` (official architectures) or ``tiny``
(the test-size architecture of docs/design.md). Weights come from an official ``.pth`` state
dict at a path the operator gives; nothing is ever downloaded. Without a checkpoint, ``tiny``
uses the shape-trained weights shipped in this package, and every variant can be asked for
deterministic random weights from a seed (with a loud warning: such a model's masks mean
nothing).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.build_sam import _build_sam
from segment_anything.modeling import Sam

from samserve.core.errors import InvalidInput
from samserve.core.sam2.models import random_sam2, unwrap_state
from samserve.core.variants import SAM2_CONFIGS, VARIANTS, family_of

log = logging.getLogger(__name__)

#: The shape-trained ``tiny`` weights shipped in the package (see ``weights/README.md``).
SHIPPED_TINY = Path(__file__).resolve().parent.parent / "weights" / "tiny_shapes.pth"

_BUILDERS: dict[str, Callable[[], Sam]] = {
    "vit_h": partial(
        _build_sam,
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=[7, 15, 23, 31],
    ),
    "vit_l": partial(
        _build_sam,
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=[5, 11, 17, 23],
    ),
    "vit_b": partial(
        _build_sam,
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=[2, 5, 8, 11],
    ),
    # docs/design.md's test-size architecture: official builder, 2 blocks of width 64.
    "tiny": partial(
        _build_sam,
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=[1],
    ),
}


#: ``checkpoint`` value that asks for seeded random weights instead of a file.
RANDOM = "random"


class RandomWeightsWarning(UserWarning):
    """Emitted whenever a model is built with random weights: its masks are meaningless."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A built SAM model and its identity.

    Attributes:
        sam: the official ``Sam`` module (``SAM2Base`` for a SAM 2 variant), in eval mode, on
            CPU, float32.
        variant: one of :data:`VARIANTS`.
        weights_sha256: hex sha256 over the state dict (names, dtypes, shapes and bytes).
        source: where the weights came from (a path, ``"shipped"`` or ``"random(seed=N)"``).
    """

    sam: Sam
    variant: str
    weights_sha256: str
    source: str

    @property
    def family(self) -> str:
        """``"sam1"`` (``segment_anything``) or ``"sam2"`` (``sam2``): which official package
        the model follows, hence its decoder, stored layout and generator defaults."""
        return family_of(self.variant)

    @property
    def public_source(self) -> str:
        """:attr:`source` as a client may see it: ``checkpoint`` instead of a file's path."""
        if self.source == "shipped" or self.source.startswith("random("):
            return self.source
        return "checkpoint"

    @property
    def model_id(self) -> str:
        """Identity used in cache keys: variant plus a prefix of the weights checksum."""
        return f"{self.variant}-{self.weights_sha256[:16]}"


def build_sam(variant: str) -> Sam:
    """Build an untrained official ``Sam`` for ``variant`` (weights as torch initialises them)."""
    if variant not in _BUILDERS:
        raise InvalidInput(f"unknown model {variant!r}; known: {', '.join(VARIANTS)}")
    return _BUILDERS[variant]()


def random_sam(variant: str, seed: int) -> Sam:
    """Build ``variant`` with deterministic random weights drawn from ``seed`` (the caller's
    random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_sam(variant)


def check_requested_model(requested: str, variant: str, model_id: str) -> None:
    """Reject a request naming a model other than the one served (empty means "yours").

    Raises:
        InvalidInput: ``requested`` is neither ``variant`` nor ``model_id``.
    """
    if requested and requested not in (variant, model_id):
        raise InvalidInput(f"model: unknown model {requested!r}; this service runs {variant}")


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Checksum of a state dict that does not depend on how it was saved."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read an official ``.pth`` state dict (tensors only, no pickled code)."""
    if not path.is_file():
        raise InvalidInput(f"checkpoint not found: {path}")
    try:
        with path.open("rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(f"{path} is not a readable .pth state dict ({reason[:200]})") from e
    if not isinstance(state, dict):
        raise InvalidInput(f"checkpoint {path} is not a state dict")
    return state


def load_model(variant: str, checkpoint: str | Path | None = None, seed: int = 0) -> LoadedModel:
    """Build ``variant`` and load its weights.

    Args:
        variant: ``vit_b``, ``vit_l``, ``vit_h``, ``tiny`` or a SAM 2 variant
            (``sam2.1_hiera_t`` ...).
        checkpoint: path to an official ``.pth`` state dict (SAM 2: a ``.pt`` file holding
            ``{"model": state_dict}``); ``"random"`` for seeded random
            weights; ``None`` for the default (the shipped shape-trained weights for ``tiny``,
            random weights for the others, which are never downloaded).
        seed: seed for random weights.

    Returns:
        The model in eval mode with float32 weights (a float16 checkpoint is upcast).

    Raises:
        InvalidInput: unknown variant, missing file, or a state dict that does not fit.
    """
    if variant not in _BUILDERS and variant not in SAM2_CONFIGS:
        raise InvalidInput(f"unknown model {variant!r}; known: {', '.join(VARIANTS)}")
    if checkpoint is None and variant == "tiny" and SHIPPED_TINY.is_file():
        checkpoint, source = SHIPPED_TINY, "shipped"
    elif checkpoint is None or str(checkpoint) == RANDOM:
        checkpoint, source = None, f"random(seed={seed})"
    else:
        source = str(checkpoint)

    sam = random_sam2(variant, seed) if variant in SAM2_CONFIGS else random_sam(variant, seed)
    if checkpoint is None:
        message = (
            f"model {variant} has RANDOM weights (seed={seed}): its masks are meaningless. "
            "Pass --checkpoint PATH to an official checkpoint file for real results."
        )
        log.warning(message)
        warnings.warn(message, RandomWeightsWarning, stacklevel=2)
    else:
        state = load_checkpoint(Path(checkpoint))
        if variant in SAM2_CONFIGS:
            state = unwrap_state(state, checkpoint)
        try:
            sam.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as e:
            raise InvalidInput(f"checkpoint {checkpoint} does not fit {variant}: {e}") from e
    sam.eval().requires_grad_(False)
    digest = state_dict_sha256(sam.state_dict())
    return LoadedModel(sam=sam, variant=variant, weights_sha256=digest, source=source)
