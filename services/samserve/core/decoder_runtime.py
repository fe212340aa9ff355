"""The mask decoder's runtimes: the folded, prefix-aware decoder in torch or on ONNX Runtime.

A decoder service runs :func:`samserve.core.prefix.decode` for every prompt without a mask
input. With ``--decoder-runtime onnxruntime`` (the default when onnxruntime is installed) that
function, folded, is exported once per model at start-up (about a second, in memory; nothing is
written or downloaded) with the per-image prefix as graph inputs, so the prefix and the LRU work
as before, and runs in ONNX Runtime: measured here at about 0.75x the torch folded decoder's time
with one thread and 0.8x with two (``bench/bench_decoder_options.py``), with the same masks
(logits within 1e-4, scores within 1e-6; ``tests/unit/test_ort_decoder.py``).

ONNX Runtime's intra-op threads are per session, so there is one session per thread count,
chosen from the calling worker's torch thread count (``--decoder-threads``, adaptive or fixed);
sessions never spin-wait, so an idle session's threads take nothing from the other workers, and
keep no memory arena, so a large batch's memory is returned when it ends.
Cases the graph does not cover take the torch path: an embedding grid other than the traced
one, or more prompt tokens than folding pays for.
"""

from __future__ import annotations

import functools
import io
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from segment_anything.modeling import Sam
from torch import Tensor

from samserve.core import folded
from samserve.core.errors import ConfigError
from samserve.core.prefix import ImagePrefix, decode, mask_outputs

#: A decoder runtime: (prefix, sparse prompt embeddings, multimask_output) -> (logits, IoU).
PrefixDecode = Callable[[ImagePrefix, Tensor, bool], tuple[Tensor, Tensor]]

RUNTIMES = ("auto", "onnxruntime", "torch")

#: The inputs a :class:`PrefixGraph` starts with.
PREFIX_INPUTS = ("sparse", "keys", "key_pe", "t2i_k", "t2i_v", "i2t_q")

#: Exported graphs by model id: one export per model per process (tests start many decoders).
_GRAPHS: dict[str, bytes] = {}
_GRAPHS_LOCK = threading.Lock()


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime is installed (``pip install samserve[onnx]``)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str) -> str:
    """``auto`` made concrete: onnxruntime when installed, else torch.

    Raises:
        ConfigError: an unknown runtime, or ``onnxruntime`` asked for and not installed.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"--decoder-runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "onnxruntime" if onnxruntime_available() else "torch"
    if runtime == "onnxruntime" and not onnxruntime_available():
        raise ConfigError(
            "--decoder-runtime onnxruntime: onnxruntime is not installed "
            "(pip install 'samserve[onnx]', or --decoder-runtime torch)"
        )
    return runtime


def torch_runtime(sam: Sam) -> PrefixDecode:
    """The folded decoder in torch (``prefix.decode``)."""

    def run(prefix: ImagePrefix, sparse: Tensor, multimask_output: bool) -> tuple[Tensor, Tensor]:
        return decode(sam, prefix, sparse, multimask_output)

    return run


def make_runtime(sam: Sam, runtime: str, model_id: str) -> PrefixDecode:
    """The decoder runtime named by ``runtime`` (after :func:`resolve_runtime`)."""
    if resolve_runtime(runtime) == "onnxruntime":
        return OrtDecoder(sam, model_id)
    return torch_runtime(sam)


def runtime_name(run: PrefixDecode) -> str:
    """``onnxruntime`` or ``torch``: what a runtime from :func:`make_runtime` runs on."""
    return "onnxruntime" if isinstance(run, OrtDecoder) else "torch"


class PrefixGraph(torch.nn.Module):
    """``decode(prefix, sparse, *extra)`` with the prefix's tensors as inputs, for export.

    Inputs, in order: sparse, keys, key_pe, t2i_k, t2i_v, i2t_q (:data:`PREFIX_INPUTS`), then
    ``extra`` (SAM 2's high-resolution maps).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        decode: Callable[..., tuple[Tensor, Tensor]],
        size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.model = model  # registered, so its weights are the graph's initializers
        self.decode = decode
        self.size = size

    def forward(
        self, sparse: Tensor, keys: Tensor, key_pe: Tensor, t2i_k: Tensor, t2i_v: Tensor,
        i2t_q: Tensor, *extra: Tensor,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        prefix = ImagePrefix(keys, key_pe, t2i_k, t2i_v, i2t_q, self.size)
        return self.decode(prefix, sparse, *extra)


def prefix_feeds(prefix: ImagePrefix, sparse: Tensor) -> dict[str, Any]:
    """A :class:`PrefixGraph`'s first inputs, as ONNX Runtime feeds (no copies)."""
    tensors = (sparse.detach(), prefix.keys, prefix.key_pe, prefix.t2i_k, prefix.t2i_v,
               prefix.i2t_q)  # fmt: skip
    return {name: t.numpy() for name, t in zip(PREFIX_INPUTS, tensors, strict=True)}


def export_onnx(
    module: torch.nn.Module,
    inputs: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> bytes:
    """``module`` exported to ONNX (TorchScript exporter, opset 17), in memory."""
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings
        torch.onnx.export(
            module.eval(),
            inputs,
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to a stream
            input_names=input_names,
            output_names=output_names,
            opset_version=17,
            dynamo=False,
            dynamic_axes=dynamic_axes,
        )
    return buf.getvalue()


def exported(key: str, export: Callable[[], bytes]) -> bytes:
    """``export()``, once per ``key`` (a model id and graph name) in this process."""
    with _GRAPHS_LOCK:
        graph = _GRAPHS.get(key)
        if graph is None:
            graph = _GRAPHS[key] = export()
        return graph


def export_graph(sam: Sam, prefix: ImagePrefix) -> bytes:
    """The ONNX graph of the folded decoder for embeddings of ``prefix``'s grid; prompts
    (batch) and prompt tokens are dynamic."""
    tokens = sam.prompt_encoder.embed_dim
    sparse = torch.zeros(2, 2, tokens)  # two prompts of two tokens: neither axis is traced as 1
    inputs = (sparse, prefix.keys, prefix.key_pe, prefix.t2i_k, prefix.t2i_v, prefix.i2t_q)
    return export_onnx(
        PrefixGraph(
            sam, functools.partial(decode, sam, multimask_output=True, all_masks=True), prefix.size
        ),
        inputs,
        list(PREFIX_INPUTS),
        ["masks", "iou"],
        {"sparse": {0: "prompts", 1: "tokens"}},
    )


class OrtGraph:
    """An exported graph and its ONNX Runtime sessions, one per intra-op thread count.

    Sessions never spin-wait and keep no memory arena (see the module docstring). The session
    with one thread is made at once, so a graph that does not load fails the start.
    """

    def __init__(self, graph: bytes) -> None:
        self.graph = graph
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.session(1)

    def session(self, threads: int) -> Any:
        """The session running on ``threads`` intra-op threads (made on first use)."""
        found = self._sessions.get(threads)
        if found is not None:
            return found
        import onnxruntime as ort

        with self._lock:
            found = self._sessions.get(threads)
            if found is None:
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                # No arena: a segment-everything batch's peak goes back to the allocator
                # instead of staying reserved by the session (same speed, measured).
                options.enable_cpu_mem_arena = False
                found = ort.InferenceSession(
                    self.graph, options, providers=["CPUExecutionProvider"]
                )
                self._sessions[threads] = found
        return found

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        """The graph's outputs, on as many threads as the calling worker's torch threads."""
        outputs: list[Any] = self.session(max(1, torch.get_num_threads())).run(None, feeds)
        return outputs


class OrtDecoder:
    """The folded decoder on ONNX Runtime (see the module docstring).

    Args:
        sam: the model (its prompt encoder and mask decoder).
        model_id: the model's identity (the in-process cache of exported graphs is keyed by it).
    """

    def __init__(self, sam: Sam, model_id: str) -> None:
        from samserve.core.prefix import build_prefix

        self.sam = sam
        grid = sam.prompt_encoder.image_embedding_size
        self.size = (int(grid[0]), int(grid[1]))

        def export() -> bytes:
            with torch.inference_mode():
                dense_pe = sam.prompt_encoder.get_dense_pe()
                features = torch.zeros(1, dense_pe.shape[1], *self.size)
                example = build_prefix(sam, features, dense_pe)
            return export_graph(sam, example)

        self.graph = OrtGraph(exported(f"{model_id}:folded", export))

    def __call__(
        self, prefix: ImagePrefix, sparse: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """``prefix.decode(sam, prefix, sparse, multimask_output)``, on ONNX Runtime."""
        tokens = self.sam.mask_decoder.num_mask_tokens + 1 + sparse.shape[1]
        attn = self.sam.mask_decoder.transformer.layers[0].cross_attn_image_to_token
        if prefix.size != self.size or not folded.foldable(attn, tokens):
            return decode(self.sam, prefix, sparse, multimask_output)
        masks, iou = self.graph.run(prefix_feeds(prefix, sparse))
        kept = mask_outputs(multimask_output)
        return torch.from_numpy(masks[:, kept]), torch.from_numpy(iou[:, kept])
