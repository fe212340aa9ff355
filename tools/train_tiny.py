"""Train the shipped weights of the ``tiny`` SAM on generated images of simple shapes.

The recipe (measured on a 2-core CPU machine; numbers in ``services/samserve/weights/README.md``):

* ``random_sam("tiny", seed=0)``, image encoder FROZEN: the shipped encoder is the seeded random
  one (rounded to float16), so only the prompt encoder and the mask decoder (4.1 M parameters)
  learn. Before training, every cross-attention of the decoder gets equal query and key
  projections (``--tied-init``): attention then starts as a similarity of content plus
  positional encoding, so a click attends to the image around it. From the plain random init
  (at lr 1e-3 or 3e-4) the decoder learned prompt-INDEPENDENT masks (all shapes, or a fixed
  partition of them that the best-of-3 loss rewards) and stayed on that plateau;
* a pool of generated images (``tools.shapes``, 2-7 shapes, varied size, aspect and zoom)
  embedded with the official preprocessing (``SamPredictor.set_image``); one is replaced by a
  fresh image every ``--refresh-every`` steps;
* prompts per image and step: single positive points inside a shape (or, rarely, on the
  background, whose mask is then the target), sometimes a positive plus a negative point, and
  a box around a shape (jittered by ~5% of its sides);
* each prompt is decoded on a window of the 64x64 token grid (32x32 mostly, also 48x48 and the
  full grid that inference uses): the decoder's upscaling is local and its attention per
  token, so a window is the same computation on fewer tokens, 5x cheaper at 32x32;
* every prompt trains all four decoder outputs (one pass computes them): the single-mask output
  (``multimask_output=False``), the best of the three multimask outputs (the paper's minimum
  loss) plus their mean (``--all-weight``; shapes are never ambiguous, and without it two of the
  three outputs stay garbage);
* mask loss BCE + dice (1 : 1) on the 256x256 low-resolution logits against the ground truth
  resampled into the padded 1024 frame (only the part that holds the image), plus the MSE
  between predicted and actual IoU of EVERY output, so the IoU head is calibrated. The paper's
  focal 20 : dice 1 collapsed from scratch; ``--focal-from`` can switch to it late;
* AdamW lr 3e-4 (warm-up, cosine decay to 10% over the last ``--decay-frac``), gradient
  clipping at 1.0, one CPU thread by default; held-out low-resolution IoUs every
  ``--val-every`` steps;
* the FULL model state dict (official ``.pth`` format, floating tensors cast to float16) is
  written to ``--out`` every ``--save-every`` steps and at the end.

``--eval PATH`` instead evaluates a checkpoint with the official API (``SamPredictor`` and
``SamAutomaticMaskGenerator``) on held-out images (training images use seeds >= 10**7).

Usage::

    python tools/train_tiny.py                  # writes the shipped file, ~40 min on one core
    python tools/train_tiny.py --eval services/samserve/weights/tiny_shapes.pth
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from samserve.core.models import load_model, random_sam

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: tools.shapes
from tools.shapes import ShapesImage, make_shapes_image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "services" / "samserve" / "weights" / "tiny_shapes.pth"

#: Training images use seeds from here on; evaluation and tests use small seeds.
TRAIN_SEED_BASE = 10_000_000
#: A target must keep at least this many pixels in the 256x256 low-resolution frame.
MIN_LOWRES_PIXELS = 12
#: Side of the image-embedding grid (64x64 tokens for a 1024x1024 input).
GRID = 64


def log(msg: str) -> None:
    """One progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One embedded image and the targets a prompt may ask for.

    ``targets`` holds the visible mask of every shape, then the background (what no shape
    covers); ``lowres`` the same masks in the 256x256 low-resolution frame, cropped to the part
    that holds the image; ``grid_boxes`` their (y0, x0, y1, x1) boxes on the 64x64 token grid.
    """

    shapes: ShapesImage
    features: torch.Tensor  # (1, 256, 64, 64)
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    targets: npt.NDArray[np.bool_]  # (N + 1, H, W)
    lowres: torch.Tensor  # (N + 1, vh, vw) float 0/1
    usable: npt.NDArray[np.bool_]  # (N + 1,): big enough to be a target at low resolution
    pixels: list[npt.NDArray[np.intp]]  # flat indices of each target's pixels
    grid_boxes: npt.NDArray[np.int64]  # (N + 1, 4)
    uses: int = 0

    @property
    def grid_size(self) -> tuple[int, int]:
        """Rows and columns of the token grid that hold the image (the rest is padding)."""
        return math.ceil(self.input_size[0] / 16), math.ceil(self.input_size[1] / 16)


def lowres_targets(masks: npt.NDArray[np.bool_], input_size: tuple[int, int]) -> torch.Tensor:
    """Resample (T, H, W) masks into the 256x256 logit frame, cropped to the image part.

    The model sees the image resized to ``input_size`` (longest side 1024) in the top-left of a
    1024x1024 frame; its low-resolution logits cover that frame at 1/4 scale.
    """
    ih, iw = input_size
    m = torch.from_numpy(masks).float()[None]
    m = F.interpolate(m, size=(ih, iw), mode="bilinear", align_corners=False)
    vh, vw = math.ceil(ih / 4), math.ceil(iw / 4)
    m = F.pad(m, (0, vw * 4 - iw, 0, vh * 4 - ih))
    return (F.avg_pool2d(m, 4)[0] > 0.5).float()


def sample_image(rng: np.random.Generator, seed: int, shapes: tuple[int, int]) -> ShapesImage:
    """A training image: varied size, aspect, number of shapes and zoom (as AMG crops see)."""
    long_side = int(rng.integers(256, 721))
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # height / width
    if aspect >= 1:
        h, w = long_side, max(128, round(long_side / aspect))
    else:
        h, w = max(128, round(long_side * aspect)), long_side
    n = int(rng.integers(shapes[0], shapes[1] + 1))
    scale = 1.0 if rng.random() < 0.7 else float(rng.uniform(1.2, 2.5))
    return make_shapes_image(seed, h, w, n, scale=scale)


def encode(predictor: SamPredictor, shapes: ShapesImage) -> Entry:
    """Embed ``shapes.image`` with the official preprocessing and build its targets."""
    predictor.set_image(shapes.image)
    features = predictor.features.detach().clone()
    original_size = (int(predictor.original_size[0]), int(predictor.original_size[1]))
    input_size = (int(predictor.input_size[0]), int(predictor.input_size[1]))
    predictor.reset_image()
    background = ~shapes.masks.any(axis=0)
    targets = np.concatenate([shapes.masks, background[None]], axis=0)
    lowres = lowres_targets(targets, input_size)
    usable = (lowres.sum(dim=(1, 2)) >= MIN_LOWRES_PIXELS).numpy()
    pixels = [np.flatnonzero(t) for t in targets]
    grid_boxes = np.zeros((len(targets), 4), dtype=np.int64)
    for i, m in enumerate(lowres.numpy() > 0.5):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if len(rows):
            grid_boxes[i] = [rows[0] // 4, cols[0] // 4, rows[-1] // 4, cols[-1] // 4]
    return Entry(
        shapes, features, original_size, input_size, targets, lowres, usable, pixels, grid_boxes
    )


def sample_points(
    rng: np.random.Generator, flat: npt.NDArray[np.intp], width: int, k: int
) -> npt.NDArray[np.float64]:
    """``k`` (x, y) points, each uniformly inside a pixel drawn from ``flat`` indices."""
    idx = flat[rng.integers(len(flat), size=k)]
    xy = np.stack([idx % width, idx // width], axis=-1).astype(np.float64)
    out: npt.NDArray[np.float64] = xy + rng.uniform(-0.5, 0.5, size=xy.shape)
    return out


def jitter_box(
    rng: np.random.Generator, box: npt.NDArray[np.int64], size: tuple[int, int]
) -> npt.NDArray[np.float64]:
    """The shape's box with each side moved by N(0, 5% of the box side), at most 10%."""
    x0, y0, x1, y1 = box.astype(np.float64)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    noise = np.clip(rng.normal(0, 0.05, 4), -0.1, 0.1) * np.array([w, h, w, h])
    out = np.array([x0, y0, x1, y1]) + noise
    out[[0, 2]] = np.clip(out[[0, 2]], 0, size[1] - 1)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, size[0] - 1)
    if out[2] - out[0] < 2 or out[3] - out[1] < 2:
        return box.astype(np.float64)
    return out


# --------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------

#: (row, column, side) of a square window of the token grid.
Window = tuple[int, int, int]

_TRANSFORM = ResizeLongestSide(1024)


def decode(
    sam: Sam,
    entry: Entry,
    points: npt.NDArray[np.float64] | None,
    labels: npt.NDArray[Any] | None,
    boxes: npt.NDArray[np.float64] | None,
    window: Window | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """``SamPredictor.predict_torch`` without postprocessing, with gradients, ALL outputs.

    ``MaskDecoder.forward`` computes four mask outputs and keeps 1..3 (``multimask_output``)
    or 0; this returns all four, so one pass trains both. With ``window``, the decoder sees
    only that square of the token grid (image embedding, its positional encoding and the dense
    prompt embedding, all at their absolute positions, so prompts need no shifting): its
    attention and upscaling are local or per token, and a 32x32 window costs a fifth of the
    full 64x64 grid. Training mixes windows with full-grid passes (what inference runs).

    Args:
        points: (K, n, 2) original-image pixels; labels: (K, n); boxes: (K, 4) XYXY pixels.

    Returns:
        Low-resolution logits (K, 4, h, w) and IoU predictions (K, 4) (index 0 the single-mask
        output, 1..3 the multimask outputs), and the (row, col) of the logits in the 256x256
        frame. Logits are cropped to the part of the frame that holds the image.
    """
    pts = None
    if points is not None and labels is not None:
        coords = _TRANSFORM.apply_coords(points, entry.original_size)
        pts = (torch.as_tensor(coords, dtype=torch.float), torch.as_tensor(labels, dtype=torch.int))
    box_t = None
    if boxes is not None:
        box_t = torch.as_tensor(_TRANSFORM.apply_boxes(boxes, entry.original_size)).float()
    sparse, dense = sam.prompt_encoder(points=pts, boxes=box_t, masks=None)
    features, pe = entry.features, sam.prompt_encoder.get_dense_pe()
    row = col = 0
    if window is not None:
        row, col, side = window
        rows, cols = slice(row, row + side), slice(col, col + side)
        features, pe, dense = features[..., rows, cols], pe[..., rows, cols], dense[..., rows, cols]
    logits, iou_pred = sam.mask_decoder.predict_masks(
        image_embeddings=features,
        image_pe=pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )
    vh, vw = entry.lowres.shape[-2:]
    y0, x0 = 4 * row, 4 * col
    return logits[..., : vh - y0, : vw - x0], iou_pred, (y0, x0)


def choose_window(
    rng: np.random.Generator, entry: Entry, target: int, anchor: tuple[float, float], side: int
) -> Window | None:
    """A ``side``-token square holding the target's box if it fits, else the prompt ``anchor``.

    ``anchor`` is the (x, y) of the prompt in original pixels. ``side`` 64 means the full grid.
    """
    if side >= GRID:
        return None
    gy, gx = _TRANSFORM.apply_coords(np.array(anchor, dtype=np.float64), entry.original_size)
    grid_h, grid_w = entry.grid_size
    y0, x0, y1, x1 = entry.grid_boxes[target].tolist()

    def start(lo: int, hi: int, at: int, extent: int) -> int:
        upper = max(0, extent - side)
        for a, b in ((max(0, hi - side + 1), min(lo, upper)), (max(0, at - side + 1), at)):
            if a <= min(b, upper):
                return int(rng.integers(a, min(b, upper) + 1))
        return min(max(0, at - side // 2), upper)

    row = start(y0, y1, min(int(gy) // 16, GRID - 1), grid_h)
    col = start(x0, x1, min(int(gx) // 16, GRID - 1), grid_w)
    return row, col, side


def mask_losses(
    logits: torch.Tensor, target: torch.Tensor, w_bce: float, w_focal: float, w_dice: float
) -> torch.Tensor:
    """Per-mask loss (K, M) of logits (K, M, h, w) against target (K, 1, h, w)."""
    t = target.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    loss = logits.new_zeros(logits.shape[:2])
    if w_bce:
        loss = loss + w_bce * bce.mean(dim=(-2, -1))
    p = torch.sigmoid(logits)
    if w_focal:  # sigmoid focal loss, alpha 0.25, gamma 2 (as in the paper / detectron2)
        p_t = p * t + (1 - p) * (1 - t)
        alpha_t = 0.25 * t + 0.75 * (1 - t)
        loss = loss + w_focal * (alpha_t * bce * (1 - p_t) ** 2).mean(dim=(-2, -1))
    if w_dice:
        inter = (p * t).sum(dim=(-2, -1))
        dice = 1 - (2 * inter + 1) / (p.sum(dim=(-2, -1)) + t.sum(dim=(-2, -1)) + 1)
        loss = loss + w_dice * dice
    return loss


@torch.no_grad()
def hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU (K, M) of ``logits > 0`` against the 0/1 target (K, 1, h, w)."""
    pred = logits > 0
    t = target.expand_as(logits) > 0.5
    inter = (pred & t).sum(dim=(-2, -1)).float()
    union = (pred | t).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def prompt_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    args: argparse.Namespace,
    weights: tuple[float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of K prompts' four outputs against their targets (K, 1, h, w).

    Mask loss: the single-mask output (0), plus the best of the three multimask outputs (1..3)
    as in the paper, plus ``args.all_weight`` times their mean (so that every output learns,
    not just the one that happens to win); then ``args.iou_weight`` times the MSE between the
    predicted and the actual IoU of all four. Returns the loss and the actual IoUs (K, 4).
    """
    per_mask = mask_losses(logits, target, *weights)
    multi = per_mask[:, 1:]
    loss = per_mask[:, 0].mean() + args.min_weight * multi.min(dim=1).values.mean()
    if args.all_weight:
        loss = loss + args.all_weight * multi.mean()
    iou = hard_iou(logits, target)
    return loss + args.iou_weight * F.mse_loss(iou_pred, iou), iou


def fp16_state_dict(sam: Sam) -> dict[str, torch.Tensor]:
    """The full state dict (official ``.pth`` layout) with floating tensors in float16."""
    return {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).clone()
        for k, v in sam.state_dict().items()
    }


def save_checkpoint(sam: Sam, path: Path) -> None:
    """Write :func:`fp16_state_dict` atomically (a partial run is always loadable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(fp16_state_dict(sam), tmp)
    os.replace(tmp, path)


def round_to_fp16(sam: Sam) -> None:
    """Round every parameter and buffer through float16, as the shipped file stores them.

    Done before training, the frozen encoder that makes the training embeddings is bit for bit
    the one users load.
    """
    with torch.no_grad():
        for t in [*sam.parameters(), *sam.buffers()]:
            if t.is_floating_point():
                t.copy_(t.to(torch.float16).to(t.dtype))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def tie_attention(sam: Sam, gain: float) -> None:
    """Initialise every decoder cross-attention with equal query and key projections.

    The attention logits then start as a (scaled) similarity of the two sides' content plus
    positional encoding, so a point token attends to the image around its click, and image
    tokens attend to prompts near them, from the first step. From a plain random init the
    decoder instead learned prompt-independent masks (all shapes, or a fixed partition of
    them) and never left that plateau within this budget.
    """
    transformer = sam.mask_decoder.transformer
    attentions = [transformer.final_attn_token_to_image]
    for layer in transformer.layers:
        attentions += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    with torch.no_grad():
        for attn in attentions:
            attn.q_proj.weight.mul_(gain)
            attn.q_proj.bias.zero_()
            attn.k_proj.weight.copy_(attn.q_proj.weight)
            attn.k_proj.bias.zero_()


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, constant, then cosine decay to 10% over the last ``decay_frac``."""
    if step < args.warmup:
        return float(args.lr * (step + 1) / args.warmup)
    decay_start = int(args.steps * (1 - args.decay_frac))
    if step < decay_start:
        return float(args.lr)
    frac = (step - decay_start) / max(1, args.steps - decay_start)
    return float(args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))))


def train(args: argparse.Namespace) -> None:
    """Run the training loop described in the module docstring."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()

    sam = random_sam("tiny", seed=0)
    if args.tied_init:
        tie_attention(sam, args.tied_init)
    round_to_fp16(sam)
    sam.image_encoder.requires_grad_(False).eval()
    sam.prompt_encoder.train()
    sam.mask_decoder.train()
    params = [*sam.prompt_encoder.parameters(), *sam.mask_decoder.parameters()]
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    predictor = SamPredictor(sam)
    n_params = sum(p.numel() for p in params)
    log(f"trainable parameters: {n_params:,} (image encoder frozen); threads={args.threads}")

    next_seed = TRAIN_SEED_BASE + args.seed * 1_000_000
    pool: list[Entry] = []
    for _ in range(args.pool_size):
        pool.append(encode(predictor, sample_image(rng, next_seed, args.shapes)))
        next_seed += 1
    held_out = make_validation(predictor, args.val_images)
    log(f"pool of {len(pool)} images embedded in {time.perf_counter() - t_start:.0f}s")

    stats: dict[str, list[float]] = defaultdict(list)
    t_log = time.perf_counter()
    for step in range(args.steps):
        if step and args.refresh_every and step % args.refresh_every == 0:
            victim = max(range(len(pool)), key=lambda i: (pool[i].uses, -i))
            pool[victim] = encode(predictor, sample_image(rng, next_seed, args.shapes))
            next_seed += 1
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        focal = args.focal_from is not None and step >= args.focal_from
        w_bce, w_focal = (0.0, 20.0) if focal else (args.bce_weight, 0.0)
        weights = (w_bce, w_focal, args.dice_weight)

        opt.zero_grad(set_to_none=True)
        picks = rng.choice(len(pool), size=min(args.images_per_step, len(pool)), replace=False)
        total, n_prompts = torch.zeros(()), 0
        for i in picks:
            entry = pool[int(i)]
            entry.uses += 1
            part, n = train_image(entry, sam, rng, args, weights, stats)
            total, n_prompts = total + part, n_prompts + n
        if n_prompts:
            (total / n_prompts).backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            stats["loss"].append(total.item() / n_prompts)

        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            now = time.perf_counter()
            parts = [f"step {done}/{args.steps}", f"{now - t_start:.0f}s"]
            parts.append(f"{(now - t_log) / args.log_every:.2f}s/step")
            parts.append(f"lr {lr_at(step, args):.1e}")
            for key in ("loss", "pt_best", "pt_pick", "pt_single", "pn", "box", "pred", "act"):
                if stats[key]:
                    parts.append(f"{key} {np.mean(stats[key]):.3f}")
            log("  ".join(parts) + ("  [focal]" if focal else ""))
            stats.clear()
            t_log = now
        if held_out and (done % args.val_every == 0 or done == args.steps):
            log(f"  held-out @ {done}: {validate(sam, held_out)}")
        if done % args.save_every == 0 or done == args.steps:
            save_checkpoint(sam, args.out)
    log(f"done: {args.steps} steps in {time.perf_counter() - t_start:.0f}s -> {args.out}")


def train_image(
    entry: Entry,
    sam: Sam,
    rng: np.random.Generator,
    args: argparse.Namespace,
    weights: tuple[float, float, float],
    stats: dict[str, list[float]],
) -> tuple[torch.Tensor, int]:
    """Summed loss and number of one image's prompts; metrics (training IoUs) go to ``stats``.

    Prompts: ``points_per_image`` single positive points (inside a shape, or with probability
    ``p_background`` on the background), with probability ``p_multi`` a positive plus a negative
    point, and ``boxes_per_image`` jittered boxes. Each is decoded on its own window of the
    token grid (side drawn from ``--windows``). ``stats`` keys: ``pt_best`` best multimask IoU of
    single points, ``pt_pick`` IoU of the multimask output with the highest predicted IoU,
    ``pt_single`` single-output IoU, ``pn`` positive+negative prompts and ``box`` boxes (single
    output), ``pred`` and ``act`` predicted and actual IoU of the multimask outputs.
    """
    n_shapes = len(entry.shapes)
    shape_ids = [i for i in range(n_shapes) if entry.usable[i]]
    if not shape_ids:
        return torch.zeros(()), 0
    width = entry.original_size[1]
    sides, probs = args.windows, args.window_probs

    # (kind, target, points, labels, box, anchor)
    prompts: list[tuple[str, int, Any, Any, Any, tuple[float, float]]] = []
    for _ in range(args.points_per_image):
        bg = entry.usable[n_shapes] and rng.random() < args.p_background
        t = n_shapes if bg else int(rng.choice(shape_ids))
        pt = sample_points(rng, entry.pixels[t], width, 1)
        prompts.append(("pt", t, pt[None], np.ones((1, 1)), None, (pt[0, 0], pt[0, 1])))
    if rng.random() < args.p_multi:
        t = int(rng.choice(shape_ids))
        pos = sample_points(rng, entry.pixels[t], width, 1)
        neg = sample_points(rng, np.flatnonzero(~entry.targets[t].ravel()), width, 1)
        pts = np.concatenate([pos, neg])[None]
        prompts.append(("pn", t, pts, np.array([[1, 0]]), None, (pos[0, 0], pos[0, 1])))
    for _ in range(args.boxes_per_image):
        t = int(rng.choice(shape_ids))
        box = jitter_box(rng, entry.shapes.boxes[t], entry.original_size)
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        prompts.append(("box", t, None, None, box[None], centre))

    loss = torch.zeros(())
    for kind, t, pts, labels, box, anchor in prompts:
        window = choose_window(rng, entry, t, anchor, int(rng.choice(sides, p=probs)))
        logits, iou_pred, (y0, x0) = decode(sam, entry, pts, labels, box, window)
        h, w = logits.shape[-2:]
        target = entry.lowres[t, y0 : y0 + h, x0 : x0 + w][None, None]
        part, iou = prompt_loss(logits, iou_pred, target, args, weights)
        loss = loss + part
        if kind == "pt":
            multi_iou, multi_pred = iou[0, 1:], iou_pred[0, 1:].detach()
            stats["pt_best"].append(float(multi_iou.max()))
            stats["pt_pick"].append(float(multi_iou[int(multi_pred.argmax())]))
            stats["pt_single"].append(float(iou[0, 0]))
            stats["pred"].extend(multi_pred.tolist())
            stats["act"].extend(multi_iou.tolist())
        else:
            stats[kind].append(float(iou[0, 0]))
    return loss, len(prompts)


# --------------------------------------------------------------------------------------------
# Held-out validation during training (full grid, low-resolution frame, no gradients)
# --------------------------------------------------------------------------------------------


def make_validation(predictor: SamPredictor, n_images: int) -> list[Entry]:
    """Embed held-out images (seeds 0.., 240x320, 4 shapes), as the final evaluation uses."""
    return [encode(predictor, make_shapes_image(seed, 240, 320)) for seed in range(n_images)]


@torch.no_grad()
def validate(sam: Sam, entries: list[Entry]) -> str:
    """Low-resolution IoUs on held-out images: one point and the exact box of every shape."""
    rng = np.random.default_rng(0)
    best, pick, single, box, pred, act, dep = [], [], [], [], [], [], []
    for e in entries:
        n = len(e.shapes)
        pts = np.stack([sample_points(rng, e.pixels[i], e.original_size[1], 1) for i in range(n)])
        target = e.lowres[:n, None]
        logits, iou_pred, _ = decode(sam, e, pts, np.ones((n, 1)), None)
        iou = hard_iou(logits, target)
        dep.append(float(logits.std(dim=0).mean() / logits.std().clamp(min=1e-6)))
        best += iou[:, 1:].max(dim=1).values.tolist()
        pick += iou[:, 1:].gather(1, iou_pred[:, 1:].argmax(1, keepdim=True))[:, 0].tolist()
        single += iou[:, 0].tolist()
        pred += iou_pred[:, 1:].flatten().tolist()
        act += iou[:, 1:].flatten().tolist()
        logits, _, _ = decode(sam, e, None, None, e.shapes.boxes.astype(np.float64))
        box += hard_iou(logits, target)[:, 0].tolist()
    return (
        f"point best-of-3 {np.mean(best):.3f}  highest-score {np.mean(pick):.3f}  "
        f"single {np.mean(single):.3f}  box {np.mean(box):.3f}  "
        f"pred {np.mean(pred):.3f} vs actual {np.mean(act):.3f} (multimask)  "
        f"click-dependence {np.mean(dep):.3f}"
    )


# --------------------------------------------------------------------------------------------
# Evaluation with the official API
# --------------------------------------------------------------------------------------------


def mask_iou(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    """IoU of two bool masks."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def evaluate(args: argparse.Namespace) -> None:
    """Point, box and automatic-mask quality of ``args.eval`` on held-out images."""
    torch.set_num_threads(args.threads)
    sam = load_model("tiny", checkpoint=args.eval).sam
    predictor = SamPredictor(sam)
    rng = np.random.default_rng(12345)
    best: list[float] = []  # best of the 3 multimask outputs
    pick: list[float] = []  # the output with the highest predicted IoU
    pick_pred: list[float] = []  # ...and that predicted IoU
    single: list[float] = []  # multimask_output=False
    box: list[float] = []
    for seed in range(args.eval_images):
        s = make_shapes_image(seed, args.eval_height, args.eval_width)
        predictor.set_image(s.image)
        for i in range(len(s)):
            flat = np.flatnonzero(s.masks[i])
            for _ in range(args.eval_points):
                pt = sample_points(rng, flat, s.width, 1)
                masks, scores, _ = predictor.predict(pt, np.array([1]), multimask_output=True)
                ious = [mask_iou(m, s.masks[i]) for m in masks]
                best.append(max(ious))
                pick.append(ious[int(np.argmax(scores))])
                pick_pred.append(float(scores.max()))
                m1, _, _ = predictor.predict(pt, np.array([1]), multimask_output=False)
                single.append(mask_iou(m1[0], s.masks[i]))
            mb, _, _ = predictor.predict(box=s.boxes[i].astype(float), multimask_output=False)
            box.append(mask_iou(mb[0], s.masks[i]))
    log(
        f"SamPredictor on seeds 0..{args.eval_images - 1} at {args.eval_height}x"
        f"{args.eval_width} ({len(box)} shapes, {len(best)} points): point IoU best-of-3 "
        f"mean {np.mean(best):.3f} median {np.median(best):.3f}; highest-score mask "
        f"{np.mean(pick):.3f} (predicted {np.mean(pick_pred):.3f}); single-output "
        f"{np.mean(single):.3f}; box mean {np.mean(box):.3f} median {np.median(box):.3f}"
    )

    settings: list[dict[str, Any]] = [
        {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95},
        {"pred_iou_thresh": 0.8, "stability_score_thresh": 0.9},
        {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.7},
    ]
    for params in settings:
        for crop_n_layers in (0, 1) if params is settings[-1] else (0,):
            amg_report(sam, args, {**params, "crop_n_layers": crop_n_layers})


def amg_report(sam: Sam, args: argparse.Namespace, params: dict[str, Any]) -> None:
    """Run the official automatic mask generator on held-out images; log how it matches."""
    amg = SamAutomaticMaskGenerator(sam, points_per_side=args.amg_points, **params)
    counts: list[int] = []
    found: list[float] = []  # fraction of GT shapes matched by some mask (IoU > 0.5)
    precise: list[float] = []  # fraction of masks that match a shape or the background
    backgrounds = 0
    t0 = time.perf_counter()
    for seed in range(args.amg_images):
        s = make_shapes_image(seed, args.eval_height, args.eval_width)
        try:
            out = amg.generate(s.image)
        except IndexError:  # segment_anything bug: crop_n_layers >= 1 and no mask anywhere
            log(f"AMG {params} on seed {seed}: IndexError (no crop yielded a mask)")
            out = []
        counts.append(len(out))
        if not out:
            found.append(0.0)
            continue
        gts = [*s.masks, ~s.masks.any(axis=0)]
        iou = np.array([[mask_iou(o["segmentation"], g) for g in gts] for o in out])
        found.append(float((iou[:, : len(s)].max(axis=0) > 0.5).mean()))
        precise.append(float((iou.max(axis=1) > 0.5).mean()))
        backgrounds += int((iou[:, -1] > 0.5).sum())
    log(
        f"AMG points_per_side={args.amg_points} {params}: masks per image {counts} "
        f"(of which background: {backgrounds} in all); GT shapes found (IoU>0.5) "
        f"{np.mean(found):.2f}; masks matching a shape or the background "
        f"{np.mean(precise) if precise else 0:.2f}; "
        f"{(time.perf_counter() - t0) / args.amg_images:.1f}s/image"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults produce the shipped file."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=560, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="data and prompt seed")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint to write")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--pool-size", type=int, default=32, help="embedded images kept")
    p.add_argument("--refresh-every", type=int, default=3, help="steps per new pool image")
    p.add_argument("--images-per-step", type=int, default=3)
    p.add_argument("--points-per-image", type=int, default=3, help="single-point prompts")
    p.add_argument("--boxes-per-image", type=int, default=1)
    p.add_argument("--p-multi", type=float, default=0.5, help="P(a pos+neg point prompt)")
    p.add_argument(
        "--windows", type=int, nargs="+", default=[32, 48, 64], help="decoder window sides"
    )
    p.add_argument(
        "--window-probs", type=float, nargs="+", default=[0.7, 0.2, 0.1], help="their odds"
    )
    p.add_argument("--p-background", type=float, default=0.1, help="P(a point on background)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--decay-frac", type=float, default=0.3, help="cosine-decayed tail")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--bce-weight", type=float, default=1.0)
    p.add_argument("--dice-weight", type=float, default=1.0)
    p.add_argument(
        "--all-weight", type=float, default=1.0, help="weight of the mean multimask loss"
    )
    p.add_argument(
        "--min-weight", type=float, default=1.0, help="weight of the best-of-3 multimask loss"
    )
    p.add_argument("--shapes", type=int, nargs=2, default=[2, 7], help="shapes per image")
    p.add_argument(
        "--tied-init", type=float, default=4.0, help="gain of the tied q/k init (0: off)"
    )
    p.add_argument("--iou-weight", type=float, default=1.0, help="weight of the IoU MSE")
    p.add_argument(
        "--focal-from", type=int, default=None, help="step from which focal 20 : dice 1 is used"
    )
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--val-every", type=int, default=100, help="held-out check every N steps")
    p.add_argument("--val-images", type=int, default=6, help="held-out images (0: none)")
    p.add_argument("--eval", type=Path, default=None, help="evaluate this checkpoint and exit")
    p.add_argument("--eval-images", type=int, default=8)
    p.add_argument("--eval-points", type=int, default=2, help="points per shape")
    p.add_argument("--eval-height", type=int, default=240)
    p.add_argument("--eval-width", type=int, default=320)
    p.add_argument("--amg-images", type=int, default=3)
    p.add_argument("--amg-points", type=int, default=8, help="AMG points_per_side")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    if args.eval is not None:
        evaluate(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
