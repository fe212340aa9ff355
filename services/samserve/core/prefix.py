"""Per-image precomputation for the mask decoder: the prompt-independent part of layer 0.

In the official ``MaskDecoder`` every call repeats work that depends only on the image: adding
the no-mask dense embedding to the image embedding, flattening it and the positional encoding
into tokens, and, in the first ``TwoWayAttentionBlock``, three of its four large projections
over the 4,096 image tokens (token-to-image keys and values, image-to-token queries). A server
answers many prompts per image, so it computes these once per image and keeps them next to the
embedding. Everything else runs the official modules' own layers in the official order, so the
results equal ``MaskDecoder.forward`` (checked in tests/unit/test_prefix.py and by the parity
suite). Prompts with a ``mask_input`` change the dense embedding and take the official path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from torch import Tensor

from samserve.core import folded


@dataclass(frozen=True, slots=True)
class ImagePrefix:
    """Prompt-independent decoder state of one image (batch dimension 1).

    Attributes:
        keys: (1, HW, C) image tokens plus the no-mask dense embedding.
        key_pe: (1, HW, C) positional-encoding tokens.
        t2i_k: layer 0 token-to-image keys, heads separated (1, heads, HW, c).
        t2i_v: layer 0 token-to-image values, heads separated.
        i2t_q: layer 0 image-to-token queries, heads separated.
        size: (h, w) of the embedding grid.
    """

    keys: Tensor
    key_pe: Tensor
    t2i_k: Tensor
    t2i_v: Tensor
    i2t_q: Tensor
    size: tuple[int, int]


@dataclass(frozen=True, slots=True)
class ReadyEmbedding:
    """A stored embedding made ready for decoding: what the decoder's LRU holds (~14 MiB; SAM
    2.1: ~26 MiB).

    Used for whole images and for segment-everything's crops alike.

    Attributes:
        features: (1, 256, 64, 64) float32 image embedding.
        prefix: the prompt-independent decoder work for it (SAM 2's decoder transformer has
            the same shape, ``core/sam2/decoder.py``).
        original_size: (H, W) of the image (or crop).
        input_size: (h, w) of the resized image the encoder saw.
        high_res_features: a SAM 2 model's (1, 32, 256, 256) and (1, 64, 128, 128) float32
            maps; empty for SAM 1.
        high_res_pixels: the same maps in the folded upscaling's pixel order
            (``folded.high_res_pixels``); empty for SAM 1.
    """

    features: Tensor
    prefix: ImagePrefix | None
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res_features: tuple[Tensor, ...] = ()
    high_res_pixels: tuple[Tensor, ...] = ()


def prepare(
    sam: Sam,
    dense_pe: Tensor,
    features: np.ndarray,
    original_size: tuple[int, int],
    input_size: tuple[int, int],
) -> ReadyEmbedding:
    """Float32 tensors and the decoder prefix of a stored (256, 64, 64) embedding."""
    tensor = torch.from_numpy(features.astype(np.float32))[None]
    return ReadyEmbedding(tensor, build_prefix(sam, tensor, dense_pe), original_size, input_size)


def build_prefix(sam: Sam, features: Tensor, dense_pe: Tensor) -> ImagePrefix:
    """Precompute the prompt-independent decoder work for ``features`` (1, C, H, W)."""
    return prefix_of(
        sam.mask_decoder.transformer, sam.prompt_encoder.no_mask_embed.weight, features, dense_pe
    )


def prefix_of(
    transformer: TwoWayTransformer, no_mask_embed: Tensor, features: Tensor, dense_pe: Tensor
) -> ImagePrefix:
    """:func:`build_prefix` from the parts (a SAM 2 decoder's transformer is the same shape)."""
    layer0 = transformer.layers[0]
    h, w = features.shape[-2:]
    no_mask = no_mask_embed.reshape(1, -1, 1, 1).expand(1, -1, h, w)
    with torch.inference_mode():
        src = features + no_mask
        keys = src.flatten(2).permute(0, 2, 1)
        key_pe = dense_pe.flatten(2).permute(0, 2, 1)
        k = keys + key_pe
        t2i = layer0.cross_attn_token_to_image
        i2t = layer0.cross_attn_image_to_token
        return ImagePrefix(
            keys=keys,
            key_pe=key_pe,
            t2i_k=t2i._separate_heads(t2i.k_proj(k), t2i.num_heads),
            t2i_v=t2i._separate_heads(t2i.v_proj(keys), t2i.num_heads),
            i2t_q=i2t._separate_heads(i2t.q_proj(k), i2t.num_heads),
            size=(h, w),
        )


def _attend(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``Attention.forward`` after its input projections (heads already separated)."""
    c_per_head = q.shape[-1]
    weights = q @ k.permute(0, 1, 3, 2)
    weights = weights / math.sqrt(c_per_head)
    weights = torch.softmax(weights, dim=-1)
    out: Tensor = attn.out_proj(attn._recombine_heads(weights @ v))
    return out


def _project(attn: Attention, proj: torch.nn.Linear, x: Tensor) -> Tensor:
    heads: Tensor = attn._separate_heads(proj(x), attn.num_heads)
    return heads


def decode(
    sam: Sam,
    prefix: ImagePrefix,
    sparse: Tensor,
    multimask_output: bool,
    fold: bool = True,
    *,
    all_masks: bool = False,
) -> tuple[Tensor, Tensor]:
    """``MaskDecoder.forward`` for prompts without a mask input, reusing ``prefix``.

    With ``fold`` (the default), the image-side projections of attention are folded into the
    prompt side when that is cheaper, and the upscaling runs channels-last on the masks asked
    for only (``core/folded.py``); ``fold=False`` runs the official layers as they are.

    Args:
        sam: the model.
        prefix: from :func:`build_prefix` for this image.
        sparse: (B, N, C) sparse prompt embeddings from the official prompt encoder.
        multimask_output: three masks (True) or one (False) per prompt.
        fold: reorder the linear work (equal up to float32 rounding).
        all_masks: return all four masks (the single mask first), whatever
            ``multimask_output`` says (the exported graph of ``core/ort_decoder.py``).

    Returns:
        Low-resolution mask logits (B, K, 256, 256) and predicted IoU (B, K).
    """
    decoder = sam.mask_decoder
    b = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)
    fold = fold and folded.foldable(
        decoder.transformer.layers[0].cross_attn_image_to_token, tokens.shape[1]
    )
    hs, keys = transform(decoder.transformer, prefix, tokens, fold)

    # MaskDecoder.predict_masks after the transformer (only the masks asked for, when folded).
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]
    h, w = prefix.size
    mask_slice = mask_outputs(multimask_output) if not all_masks else slice(None)
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    if fold:
        mlps = list(enumerate(decoder.output_hypernetworks_mlps))[mask_slice]
        hyper = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in mlps], dim=1)
        masks = folded.upscaling(sam).masks(keys, (h, w), hyper)
        return masks, iou_pred[:, mask_slice]
    src = keys.transpose(1, 2).reshape(b, -1, h, w)
    upscaled = decoder.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )
    _, c, uh, uw = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, uh * uw)).view(b, -1, uh, uw)
    return masks[:, mask_slice, :, :], iou_pred[:, mask_slice]


def transform(
    transformer: TwoWayTransformer, prefix: ImagePrefix, tokens: Tensor, fold: bool
) -> tuple[Tensor, Tensor]:
    """``TwoWayTransformer.forward`` for prompt-side ``tokens`` (output tokens then sparse
    prompt embeddings, (B, T, C)) over the image of ``prefix``: the processed tokens and image
    tokens. ``fold``: fold attention's image-side projections (see :func:`decode`)."""
    layer = transformer.layers[0]

    # Layer 0 (skip_first_layer_pe), with the image-side projections from the prefix.
    queries = layer.self_attn(q=tokens, k=tokens, v=tokens)
    queries = layer.norm1(queries)
    t2i = layer.cross_attn_token_to_image
    q = _project(t2i, t2i.q_proj, queries + tokens)
    queries = layer.norm2(queries + _attend(t2i, q, prefix.t2i_k, prefix.t2i_v))
    queries = layer.norm3(queries + layer.mlp(queries))
    i2t = layer.cross_attn_image_to_token
    q_tokens = queries + tokens
    if fold:
        attn = folded.image_to_tokens_projected(i2t, prefix.i2t_q, q_tokens, queries)
    else:
        k = _project(i2t, i2t.k_proj, q_tokens)
        v = _project(i2t, i2t.v_proj, queries)
        attn = _attend(i2t, prefix.i2t_q, k, v)
    keys = layer.norm4(prefix.keys + attn)
    key_pe = prefix.key_pe

    # The remaining layers and the final attention, as TwoWayTransformer.forward.
    final = transformer.final_attn_token_to_image
    if fold:
        for layer in transformer.layers[1:]:
            queries, keys = _folded_layer(layer, queries, keys, tokens, key_pe)
        attn_out = folded.tokens_to_image(final, queries + tokens, keys + key_pe, keys)
    else:
        for layer in transformer.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
        attn_out = final(q=queries + tokens, k=keys + key_pe, v=keys)
    hs: Tensor = transformer.norm_final_attn(queries + attn_out)
    return hs, keys


def mask_outputs(multimask_output: bool) -> slice:
    """Which of the decoder's four masks an answer holds (``MaskDecoder.forward``)."""
    return slice(1, None) if multimask_output else slice(0, 1)


def _folded_layer(
    layer: TwoWayAttentionBlock, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
) -> tuple[Tensor, Tensor]:
    """``TwoWayAttentionBlock.forward`` (without skip_first_layer_pe) with both cross
    attentions folded (``core/folded.py``)."""
    q = queries + query_pe
    queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
    keys_pe = keys + key_pe
    attn = folded.tokens_to_image(
        layer.cross_attn_token_to_image, queries + query_pe, keys_pe, keys
    )
    queries = layer.norm2(queries + attn)
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    keys = layer.norm4(
        keys + folded.image_to_tokens(layer.cross_attn_image_to_token, keys_pe, q, queries)
    )
    return queries, keys
