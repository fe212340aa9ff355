"""Model registry: SAM variants built with the official ``segment_anything`` builders.

A variant is one of ``vit_b``, ``vit_l``, ``vit_h`` (official architectures) or ``tiny``
(the test-size architecture of docs/design.md). Weights come from an official ``.pth`` state
dict at a path the operator gives; nothing is ever downloaded. Without a checkpoint, ``tiny``
uses the shape-trained weights shipped in this package, and every variant can be asked for
deterministic random weights from a seed (with a loud warning: such a model's masks mean
nothing).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import mmap
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.build_sam import _build_sam
from segment_anything.modeling import Sam
from torch import nn

from samserve.core.errors import InvalidInput
from samserve.core.sam2.models import random_sam2, unwrap_state
from samserve.core.variants import ENCODER_DTYPES, SAM2_CONFIGS, VARIANTS, family_of

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


#: ``parts`` of :func:`load_model`: the whole model, or only what a decoder runs.
ALL, DECODER = "all", "decoder"
#: State dict prefixes a decoder-only model keeps.
DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


class ImageEncoderStub(nn.Module):
    """Stands in for the image encoder of a decoder-only ``Sam``: it has the input side that
    the coordinate transform and ``postprocess_masks`` read, and no weights; running it is a
    bug."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model was loaded without its image encoder (decoder only)")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A built SAM model and its identity.

    Attributes:
        sam: the official ``Sam`` module (``SAM2Base`` for a SAM 2 variant), in eval mode, on
            CPU, float32; with ``parts == "decoder"`` (SAM 1) its image encoder is an
            :class:`ImageEncoderStub`.
        variant: one of :data:`VARIANTS`.
        weights_sha256: hex sha256 over the *whole* state dict (names, dtypes, shapes and
            bytes), image encoder included, whatever ``parts`` holds.
        source: where the weights came from (a path, ``"shipped"`` or ``"random(seed=N)"``).
        parts: ``"all"``, or ``"decoder"`` (prompt encoder and mask decoder only).
        encoder_dtype: the image encoder's compute dtype (``float32``, ``bfloat16``,
            ``float16``): part of the model id, so embeddings computed in bf16 and in fp32
            never share a key.
    """

    sam: Sam
    variant: str
    weights_sha256: str
    source: str
    parts: str = ALL
    encoder_dtype: str = "float32"

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
        """Identity used in cache keys: variant, a prefix of the weights checksum, and the
        encoder's compute dtype unless float32 (``vit_h-0123456789abcdef-bf16``)."""
        return encoder_model_id(self.variant, self.weights_sha256, self.encoder_dtype)


#: The suffix each encoder compute dtype adds to a model id.
_DTYPE_SUFFIX = {"float32": "", "bfloat16": "-bf16", "float16": "-fp16"}


def encoder_model_id(variant: str, weights_sha256: str, encoder_dtype: str = "float32") -> str:
    """The model id of ``variant`` with these weights, its encoder computing in
    ``encoder_dtype``."""
    if encoder_dtype not in ENCODER_DTYPES:
        raise ValueError(f"encoder dtype must be one of {', '.join(ENCODER_DTYPES)}")
    return f"{variant}-{weights_sha256[:16]}{_DTYPE_SUFFIX[encoder_dtype]}"


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


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _drop_pages(t: torch.Tensor) -> None:
    """Hand the memory-mapped file pages under ``t`` back to the kernel (Linux): a streamed
    checksum then never holds more than one tensor of the file in memory."""
    if _libc is None:
        return
    storage = t.untyped_storage()
    start = storage.data_ptr() & ~(_PAGE - 1)
    end = storage.data_ptr() + storage.nbytes()
    if end > start:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def _mapped_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict of ``path`` with its tensors memory-mapped, not read, and True (zip
    checkpoints); a legacy file is read whole (and False)."""
    if not path.is_file():
        raise InvalidInput(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return load_checkpoint(path), False  # not a zip file: no mmap, read it the old way
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(f"{path} is not a readable .pth state dict ({reason[:200]})") from e
    if not isinstance(state, dict):
        raise InvalidInput(f"checkpoint {path} is not a state dict")
    return state, True


def _load_decoder_only(variant: str, path: Path) -> tuple[Sam, str]:
    """A decoder-only ``Sam`` (prompt encoder + mask decoder) from ``path``, and the checksum
    of the whole model's state dict, computed without building the image encoder: the model
    is laid out on the meta device (names, dtypes, shapes, no memory), the checkpoint is
    memory-mapped, and each tensor is hashed as :func:`state_dict_sha256` would hash it after
    ``load_state_dict`` (cast to the parameter's dtype), its pages dropped once hashed.
    """
    with torch.device("meta"):
        layout = build_sam(variant)
    expected = layout.state_dict()
    state, mapped = _mapped_checkpoint(path)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InvalidInput(
            f"checkpoint {path} does not fit {variant}: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    h = hashlib.sha256()
    kept: dict[str, torch.Tensor] = {}
    for name in sorted(expected):
        want, have = expected[name], state[name]
        if tuple(have.shape) != tuple(want.shape):
            raise InvalidInput(
                f"checkpoint {path} does not fit {variant}: {name} has shape "
                f"{tuple(have.shape)}, the model {tuple(want.shape)}"
            )
        t = have.float().to(want.dtype).contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        if name.startswith(DECODER_PREFIXES):
            kept[name] = t.clone()
        del t
        if mapped:  # never on ordinary memory: MADV_DONTNEED would zero it
            _drop_pages(have)
    sam = strip_image_encoder(layout)
    for part in ("prompt_encoder", "mask_decoder"):
        module: nn.Module = getattr(sam, part).to_empty(device="cpu")
        prefix = part + "."
        module.load_state_dict(
            {k[len(prefix) :]: v for k, v in kept.items() if k.startswith(prefix)}, strict=True
        )
    # Sam's pixel mean and std are buffers outside the state dict: made again on the CPU.
    sam.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
    sam.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)
    return sam, h.hexdigest()


def strip_image_encoder(sam: Sam) -> Sam:
    """``sam`` with its image encoder replaced by an :class:`ImageEncoderStub` (in place)."""
    sam.image_encoder = ImageEncoderStub(sam.image_encoder.img_size)
    return sam


def load_model(
    variant: str, checkpoint: str | Path | None = None, seed: int = 0, parts: str = ALL
) -> LoadedModel:
    """Build ``variant`` and load its weights.

    Args:
        variant: ``vit_b``, ``vit_l``, ``vit_h``, ``tiny`` or a SAM 2 variant
            (``sam2.1_hiera_t`` ...).
        checkpoint: path to an official ``.pth`` state dict (SAM 2: a ``.pt`` file holding
            ``{"model": state_dict}``); ``"random"`` for seeded random
            weights; ``None`` for the default (the shipped shape-trained weights for ``tiny``,
            random weights for the others, which are never downloaded).
        seed: seed for random weights.
        parts: ``"all"``, or ``"decoder"`` for a model without its image encoder (decoders,
            and embedding services whose encoder is Triton). From a checkpoint file it never
            builds the image encoder (the checksum streams the file); random weights are
            drawn whole (the same seed must give the same weights) and the encoder dropped.

    Returns:
        The model in eval mode with float32 weights (a float16 checkpoint is upcast).

    Raises:
        InvalidInput: unknown variant, missing file, or a state dict that does not fit.
    """
    if variant not in _BUILDERS and variant not in SAM2_CONFIGS:
        raise InvalidInput(f"unknown model {variant!r}; known: {', '.join(VARIANTS)}")
    if parts not in (ALL, DECODER):
        raise ValueError(f"parts must be {ALL!r} or {DECODER!r}")
    if checkpoint is None and variant == "tiny" and SHIPPED_TINY.is_file():
        checkpoint, source = SHIPPED_TINY, "shipped"
    elif checkpoint is None or str(checkpoint) == RANDOM:
        checkpoint, source = None, f"random(seed={seed})"
    else:
        source = str(checkpoint)

    if checkpoint is not None and parts == DECODER and variant not in SAM2_CONFIGS:
        sam, digest = _load_decoder_only(variant, Path(checkpoint))
        sam.eval().requires_grad_(False)
        return LoadedModel(sam, variant, digest, source, DECODER)
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
    if parts == DECODER and variant in SAM2_CONFIGS:
        parts = ALL  # SAM 2's decoder reads the model whole (no lean load for it yet)
    elif parts == DECODER:
        strip_image_encoder(sam)
    return LoadedModel(sam=sam, variant=variant, weights_sha256=digest, source=source, parts=parts)
