"""The mask decoder's large per-prompt work, reordered to do fewer multiply-adds.

Same functions, same weights, different order of the (linear) operations; results differ from the
official modules only by float32 rounding (tests/unit/test_prefix.py, the parity suite).

Attention between a few prompt tokens (T, about 7) and the 4,096 image tokens: the official
``Attention`` projects all 4,096 image tokens (256 to 128 channels) before attending, and projects
the 4,096 outputs back (128 to 256). With H heads of c channels, a projection folds into the
other side: ``q_h . (W_k x + b_k) = (W_k_h^T q_h) . x + const`` (a per-row constant that softmax
ignores), and ``softmax(s) (W_v x + b_v) = W_v (softmax(s) x) + b_v`` (softmax rows sum to 1).
The image side then costs H*T x 256 per token instead of 128 x 256: about 2.3 times fewer
multiply-adds while H*T < 128 (:func:`foldable`).

Upscaling: the two stride-2 2x2 transposed convolutions are per-pixel matrix products. Done on
the token-major (channels-last) layout the transformer leaves, with the mask contraction
(``hyper_in @ upscaled``) done before the pixels are put back in order, nothing 256x256x32 is ever
transposed, and only the masks asked for are contracted.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention
from torch import Tensor, nn
from torch.nn import functional


def foldable(attn: Attention, tokens: int) -> bool:
    """Whether folding beats projecting the image tokens for ``tokens`` prompt-side tokens."""
    return bool(attn.num_heads * tokens < attn.internal_dim)


def _heads(w: Tensor, num_heads: int) -> Tensor:
    """(Ci, C) projection weight as (H, c, C)."""
    return w.reshape(num_heads, w.shape[0] // num_heads, w.shape[1])


def tokens_to_image(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attn(q=q, k=k, v=v)`` for few query tokens q (B, T, C) over many image tokens k, v
    (B, N, C), with the image-side projections folded into the query side."""
    b, t, _ = q.shape
    h = attn.num_heads
    qh = attn._separate_heads(attn.q_proj(q), h)  # (B, H, T, c)
    c = qh.shape[-1]
    wk = _heads(attn.k_proj.weight, h)  # (H, c, C)
    qk = torch.matmul(qh, wk).reshape(b, h * t, -1)  # (B, H*T, C)
    scores = torch.bmm(qk, k.transpose(1, 2)) / math.sqrt(c)  # (B, H*T, N)
    weights = torch.softmax(scores, dim=-1)
    mixed = torch.bmm(weights, v).reshape(b, h, t, -1)  # (B, H, T, C)
    wv = _heads(attn.v_proj.weight, h)  # (H, c, C)
    out = torch.matmul(mixed, wv.transpose(1, 2)) + attn.v_proj.bias.reshape(h, 1, c)
    result: Tensor = attn.out_proj(attn._recombine_heads(out))
    return result


def _image_side(attn: Attention, weights: Tensor, v: Tensor) -> Tensor:
    """``out_proj`` of the heads' ``weights @ v``: weights (B, N, H, T), v (B, H, T, c)."""
    b, n, h, t = weights.shape
    c = v.shape[-1]
    wo = attn.out_proj.weight  # (C, Ci)
    vo = torch.matmul(v, wo.reshape(wo.shape[0], h, c).permute(1, 2, 0))  # (B, H, T, C)
    return torch.baddbmm(
        attn.out_proj.bias.expand(b, 1, -1),
        weights.reshape(b, n, h * t),
        vo.reshape(b, h * t, -1),
    )


def image_to_tokens(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attn(q=q, k=k, v=v)`` for many image-token queries q (B, N, C) over few tokens k, v
    (B, T, C), with the image-side projections folded into the token side."""
    b, t, _ = k.shape
    h = attn.num_heads
    kh = attn._separate_heads(attn.k_proj(k), h)  # (B, H, T, c)
    vh = attn._separate_heads(attn.v_proj(v), h)
    c = kh.shape[-1]
    wq = _heads(attn.q_proj.weight, h)  # (H, c, C)
    folded = torch.matmul(kh, wq)  # (B, H, T, C): rows of W_q_h^T k
    bias = (kh * attn.q_proj.bias.reshape(1, h, 1, c)).sum(-1).reshape(b, 1, h * t)
    scores = torch.baddbmm(bias, q, folded.reshape(b, h * t, -1).transpose(1, 2))
    weights = torch.softmax((scores / math.sqrt(c)).reshape(b, -1, h, t), dim=-1)
    return _image_side(attn, weights, vh)


def image_to_tokens_projected(attn: Attention, qh: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """:func:`image_to_tokens` with the queries already projected, heads separated
    (1, H, N, c): layer 0's per-image prefix."""
    h = attn.num_heads
    kh = attn._separate_heads(attn.k_proj(k), h)  # (B, H, T, c)
    vh = attn._separate_heads(attn.v_proj(v), h)
    scores = torch.matmul(qh, kh.transpose(2, 3)) / math.sqrt(qh.shape[-1])  # (B, H, N, T)
    weights = torch.softmax(scores, dim=-1).permute(0, 2, 1, 3)  # (B, N, H, T)
    return _image_side(attn, weights, vh)


@dataclass(frozen=True, slots=True)
class Upscaling:
    """The decoder's ``output_upscaling`` as two per-pixel matrix products (channels last).

    Attributes:
        w1, b1: first transposed convolution, columns ordered (dy, dx, channel).
        norm_weight, norm_bias, eps: its LayerNorm2d.
        act1, act2: the activations.
        w2, b2: second transposed convolution, columns ordered (ey, ex, channel).
    """

    w1: Tensor
    b1: Tensor
    norm_weight: Tensor
    norm_bias: Tensor
    eps: float
    act1: nn.Module
    w2: Tensor
    b2: Tensor
    act2: nn.Module

    @classmethod
    def of(cls, seq: nn.Sequential) -> Upscaling:
        conv1, norm, act1, conv2, act2 = seq
        assert isinstance(conv1, nn.ConvTranspose2d) and isinstance(conv2, nn.ConvTranspose2d)
        # SAM 1's LayerNorm2d or SAM 2's (the same normalisation over channels).
        assert type(norm).__name__ == "LayerNorm2d" and hasattr(norm, "eps")
        assert conv1.kernel_size == (2, 2) and conv1.stride == (2, 2)
        assert conv2.kernel_size == (2, 2) and conv2.stride == (2, 2)
        with torch.inference_mode():
            w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1).contiguous()
            w2 = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.in_channels, -1).contiguous()
            assert conv1.bias is not None and conv2.bias is not None
            b1 = conv1.bias.repeat(4)
            b2 = conv2.bias.repeat(4)
        weight, bias, eps = norm.weight, norm.bias, norm.eps
        assert isinstance(weight, Tensor) and isinstance(bias, Tensor) and isinstance(eps, float)
        return cls(w1, b1, weight, bias, eps, act1, w2, b2, act2)

    def masks(
        self,
        tokens: Tensor,
        size: tuple[int, int],
        hyper: Tensor,
        high_res: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``(hyper @ output_upscaling(src)).view(B, M, 4h, 4w)`` where ``src`` is the image
        tokens (B, h*w, C) laid out as (B, C, h, w), and ``hyper`` (B, M, C2).

        ``high_res``: SAM 2's high-resolution maps from :func:`high_res_pixels`, added after
        each transposed convolution as SAM 2's ``MaskDecoder.predict_masks`` adds them.
        """
        b, n, _ = tokens.shape
        h, w = size
        c1 = self.norm_weight.shape[0]
        c2 = hyper.shape[-1]
        m = hyper.shape[1]
        x = torch.addmm(self.b1, tokens.reshape(b * n, -1), self.w1)  # (B*N, 4*C1)
        if high_res is not None:
            x = (x.view(b, -1, c1) + high_res[1]).view(-1, c1)
        x = functional.layer_norm(x.view(-1, c1), (c1,), self.norm_weight, self.norm_bias, self.eps)
        x = self.act1(x)  # (B*N*4, C1): pixels (b, y, x, dy, dx)
        x = torch.addmm(self.b2, x, self.w2)  # (B*N*4, 4*C2)
        if high_res is not None:
            x = x.view(b, -1, 4 * c2) + high_res[0]
        x = self.act2(x)
        x = x.reshape(b, n * 16, c2)  # pixels (y, x, dy, dx, ey, ex)
        out = torch.matmul(x, hyper.transpose(1, 2))  # (B, N*16, M)
        out = out.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return out.reshape(b, m, 4 * h, 4 * w)


_UPSCALING: weakref.WeakKeyDictionary[nn.Module, Upscaling] = weakref.WeakKeyDictionary()


def high_res_pixels(s0: Tensor, s1: Tensor) -> tuple[Tensor, Tensor]:
    """SAM 2's high-resolution maps, (1, C2, 4h, 4w) and (1, C1, 2h, 2w), in the pixel order of
    :meth:`Upscaling.masks`: (h*w*4, 4*C2) with rows (y, x, dy, dx) and columns (ey, ex, c),
    and (h*w*4, C1) with rows (y, x, dy, dx). Once per image."""
    c2, c1 = s0.shape[1], s1.shape[1]
    h, w = s1.shape[2] // 2, s1.shape[3] // 2
    p1 = s1[0].reshape(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w * 4, c1)
    p0 = s0[0].reshape(c2, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0)
    return p0.reshape(h * w * 4, 4 * c2).contiguous(), p1.contiguous()


def high_res_maps(p0: Tensor, p1: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`high_res_pixels` for an (h, w) grid: the (1, C2, 4h, 4w) and
    (1, C1, 2h, 2w) maps again (bit for bit: a permutation)."""
    h, w = size
    c1 = p1.shape[1]
    c2 = p0.shape[1] // 4
    s1 = p1.reshape(h, w, 2, 2, c1).permute(4, 0, 2, 1, 3).reshape(1, c1, 2 * h, 2 * w)
    s0 = p0.reshape(h, w, 2, 2, 2, 2, c2).permute(6, 0, 2, 4, 1, 3, 5)
    return s0.reshape(1, c2, 4 * h, 4 * w), s1


def upscaling(sam: Sam) -> Upscaling:
    """The model's :class:`Upscaling` (built once per model)."""
    return upscaling_of(sam.mask_decoder.output_upscaling)


def upscaling_of(seq: nn.Sequential) -> Upscaling:
    """:class:`Upscaling` of a decoder's ``output_upscaling`` (built once per module)."""
    found = _UPSCALING.get(seq)
    if found is None:
        found = _UPSCALING[seq] = Upscaling.of(seq)
    return found
