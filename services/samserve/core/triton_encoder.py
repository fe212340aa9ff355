"""The image encoder on NVIDIA Triton Inference Server (``tritonclient.grpc.aio``).

The model is ``triton_models/sam_image_encoder_<variant>``: it takes the resized uint8 image
padded to 1024x1024x3 plus its real (h, w), normalises and pads inside (as ``Sam.preprocess``
does), and Triton's dynamic batcher groups concurrent requests into one encoder run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from samserve.core import variants
from samserve.core.errors import DeadlineExceeded, Unavailable

log = logging.getLogger(__name__)

#: Side of the square the encoder takes (``ImageEncoderViT.img_size`` for every variant).
IMG_SIZE = 1024
#: Shape of one embedding: ``SamPredictor.features[0]``.
EMBEDDING_SHAPE = (256, 64, 64)
#: How often a Triton found serving other weights is asked again (seconds), besides each time
#: it comes back from not ready.
RECHECK_INTERVAL_S = 10.0
#: The probe image of the identity check (any image does: only MODEL_ID is read).
_PROBE = np.zeros((16, 16, 3), np.uint8)

#: The largest message either way: one 3 MiB image out, one 4 MiB embedding back, with room.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def triton_model_name(variant: str) -> str:
    """Name of the Triton model that serves ``variant`` (``sam_image_encoder_vit_h``, ...)."""
    return variants.triton_model_name(variant)


#: How long a dead endpoint may take to answer a keepalive ping (seconds).
KEEPALIVE_TIMEOUT_S = 5.0


def _channel_args(keepalive: float = 0.0) -> list[tuple[str, Any]]:
    # Passing channel_args replaces tritonclient's defaults, so the size limits are restated.
    pings: list[tuple[str, Any]] = []
    if keepalive > 0:
        # A dead or hung endpoint (node lost, no RST) is found within keepalive + 5 s, its
        # calls fail UNAVAILABLE (the Embed is retried by the SDK) and the channel reconnects
        # elsewhere, instead of every call waiting for its deadline. Triton must permit pings
        # this often (docs/deploy.md lists its flags; samserve up's private Triton sets them).
        pings = [
            ("grpc.keepalive_time_ms", int(keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # gRPC core otherwise sends at most one ping per 5 minutes while no data flows
            # (as during a long encode): the watchdog would never run.
            ("grpc.http2.min_time_between_pings_ms", int(keepalive * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", int(keepalive * 1000)),
            # gRPC 1.81 does not enforce keepalive_timeout_ms on its own: a hung peer whose
            # kernel still acknowledges the bytes (a stopped process, a wedged host) holds a
            # call whose request is sent until the deadline. The ping timeout (default 1 min)
            # closes the connection when any ping (keepalive or BDP) is not answered in time.
            ("grpc.http2.ping_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
        ]
    return [
        *pings,
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        # Triton is a sidecar or an in-cluster Service: after a restart, reconnect within a
        # second or two instead of gRPC's default backoff of up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # With a `dns:///triton-headless:8001` address, spread calls over every Triton pod.
        ("grpc.lb_policy_name", "round_robin"),
        # New endpoints (a scale-up) are found by replacing the channel every channel_age
        # seconds (TritonEncoder): Triton's server sets no connection age of its own.
    ]


class TritonEncoder:
    """Encodes images on a Triton server; implements :class:`samserve.core.encoder.Encoder`.

    The gRPC channel is made on first use, inside the running event loop (a ``grpc.aio``
    channel belongs to the loop that made it), so the encoder may be built anywhere.

    Args:
        address: ``host:port`` of Triton's gRPC endpoint.
        model_name: the Triton model, e.g. ``triton_model_name("vit_h")``.
        timeout: seconds per encode, covering Triton's queue and the run; the same value is
            sent as the request's queue timeout, so Triton drops work nobody waits for.
        ready_timeout: seconds for each health call in :meth:`ready`.
        tls_ca: speak TLS to Triton, trusting this CA (PEM path).
        tls_cert, tls_key: the client certificate and key for Triton's mutual TLS.
        keepalive: seconds between keepalive pings (0: none); Triton must permit them.
        channel_age: seconds after which new calls go to a fresh channel, which resolves the
            address again (``dns:///`` finds the pods there now); the old one closes once its
            calls had ``timeout`` to finish. 0: one channel for ever.
        expect_model_id: the only model id (weights checksum and compute dtype) whose
            embeddings this client returns: every response's ``MODEL_ID`` is checked, and
            :meth:`ready` asks once at start and again whenever Triton comes back. On a
            mismatch it logs one line naming both ids, is not ready (NOT_SERVING) and every
            encode fails UNAVAILABLE, so nothing is ever stored under the wrong id. None: no
            check (tests of the transport only).
    """

    def __init__(
        self,
        address: str,
        model_name: str,
        timeout: float = 60.0,
        *,
        ready_timeout: float = 2.0,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        expect_model_id: str | None = None,
        keepalive: float = 0.0,
        channel_age: float = 0.0,
    ) -> None:
        if timeout <= 0 or ready_timeout <= 0:
            raise ValueError("timeouts must be > 0")
        self._tls = {
            "ssl": tls_ca is not None,
            "root_certificates": tls_ca,
            "private_key": tls_key,
            "certificate_chain": tls_cert,
        }
        self.address = address
        self.model_name = model_name
        self.timeout = timeout
        self.ready_timeout = ready_timeout
        self._client: triton_aio.InferenceServerClient | None = None
        self.keepalive = keepalive
        self.channel_age = channel_age
        self._client_born = 0.0
        #: Channels made so far (the first one included).
        self.channels = 0
        self._retiring: set[asyncio.Task[None]] = set()
        self.expect_model_id = expect_model_id
        #: The id Triton last answered with (None: not asked since it was last unready).
        self.served_model_id: str | None = None
        self._checked_at = 0.0

    def _get_client(self) -> triton_aio.InferenceServerClient:
        now = time.monotonic()
        if (
            self._client is not None
            and self.channel_age > 0
            and now - self._client_born >= self.channel_age
        ):
            old, self._client = self._client, None
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        if self._client is None:
            self._client = triton_aio.InferenceServerClient(
                self.address, channel_args=_channel_args(self.keepalive), **self._tls
            )
            self._client_born = now
            self.channels += 1
        return self._client

    async def _retire(self, client: triton_aio.InferenceServerClient) -> None:
        """Close a replaced channel once the calls it carries have had their time."""
        try:
            await asyncio.sleep(self.timeout)
        finally:
            await client.close()

    async def encode(self, input_image: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """Embed one image.

        Args:
            input_image: (h, w, 3) uint8 RGB with 1 <= h, w <= 1024: the output of
                ``ResizeLongestSide(1024).apply_image`` (or any smaller crop of that form).
            timeout: what remains of the caller's deadline, seconds; the request's deadline and
                Triton's queue timeout are the smaller of it and this encoder's ``timeout``, so
                Triton drops work nobody waits for any more.

        Returns:
            (256, 64, 64) float32, as ``SamPredictor.features[0]``.

        Raises:
            Unavailable: Triton unreachable, the model not loaded, or its queue full.
            DeadlineExceeded: no answer within ``timeout`` (or dropped from Triton's queue).
            ValueError: ``input_image`` is not a uint8 RGB image that fits 1024x1024.
        """
        if (
            input_image.dtype != np.uint8
            or input_image.ndim != 3
            or input_image.shape[2] != 3
            or not (1 <= input_image.shape[0] <= IMG_SIZE and 1 <= input_image.shape[1] <= IMG_SIZE)
        ):
            raise ValueError(
                f"input_image must be (h, w, 3) uint8 with h, w in [1, {IMG_SIZE}], "
                f"got {input_image.shape} {input_image.dtype}"
            )
        if self._refusing():
            raise Unavailable(
                f"image encoder on Triton serves other weights ({self.served_model_id}, not "
                f"{self.expect_model_id})"
            )
        h, w = int(input_image.shape[0]), int(input_image.shape[1])
        # A fixed 1024x1024 shape lets Triton batch any mix of images; the model ignores the
        # padding (it re-pads after normalising), so its content does not matter.
        padded = np.zeros((1, IMG_SIZE, IMG_SIZE, 3), np.uint8)
        padded[0, :h, :w] = input_image
        image = InferInput("IMAGE", list(padded.shape), "UINT8")
        image.set_data_from_numpy(padded)
        size = InferInput("IMAGE_SIZE", [1, 2], "INT32")
        size.set_data_from_numpy(np.array([[h, w]], np.int32))
        result = await self._infer([image, size], ["EMBEDDING"], timeout)
        features = result.as_numpy("EMBEDDING")
        if features is None or features.shape != (1, *EMBEDDING_SHAPE):
            got = None if features is None else features.shape
            raise RuntimeError(f"Triton model {self.model_name} returned EMBEDDING {got}")
        # as_numpy views the response buffer (read-only, maybe float16): return our own copy.
        out: np.ndarray = np.array(features[0], dtype=np.float32)
        return out

    def _refusing(self) -> bool:
        """True while Triton was found serving other weights less than a recheck ago: calls
        fail at once instead of running an encode whose result would be thrown away."""
        return (
            self.expect_model_id is not None
            and self.served_model_id is not None
            and self.served_model_id != self.expect_model_id
            and time.monotonic() - self._checked_at < RECHECK_INTERVAL_S
        )

    async def _infer(self, inputs: list[Any], names: list[str], timeout: float | None) -> Any:
        """One inference within ``timeout`` (capped by the encoder's own): the outputs
        ``names`` (plus MODEL_ID, checked, when an identity is expected), Triton's errors mapped
        (:meth:`_error`)."""
        limit = self.timeout if timeout is None else max(0.001, min(timeout, self.timeout))
        outputs = [InferRequestedOutput(name) for name in names]
        if self.expect_model_id is not None:
            outputs.append(InferRequestedOutput("MODEL_ID"))
        try:
            result = await self._get_client().infer(
                self.model_name,
                inputs,
                outputs=outputs,
                client_timeout=limit,
                timeout=max(1, int(limit * 1_000_000)),  # Triton's queue timeout, microseconds
            )
        except InferenceServerException as e:
            raise self._error(e, limit) from e
        if self.expect_model_id is not None:
            self._check_identity(result.as_numpy("MODEL_ID"))
        return result

    def _check_identity(self, ids: np.ndarray | None) -> None:
        """Raise Unavailable unless Triton's MODEL_ID is ours (logged once per change)."""
        got = "none (its config has no MODEL_ID output)"
        if ids is not None and ids.size:
            raw = ids.reshape(-1)[0]
            got = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if got != self.served_model_id:
            if got != self.expect_model_id:
                log.error(
                    "triton %s %s serves model %s, this service is %s: refusing to serve "
                    "(NOT_SERVING) and storing nothing until they match",
                    self.address, self.model_name, got, self.expect_model_id,
                )  # fmt: skip
            elif self.served_model_id is not None:
                log.info("triton %s %s serves model %s again", self.address, self.model_name, got)
        self.served_model_id = got
        self._checked_at = time.monotonic()
        if got != self.expect_model_id:
            raise Unavailable(
                f"image encoder on Triton serves other weights ({got}, not {self.expect_model_id})"
            )

    async def ready(self) -> bool:
        """True when Triton is live, the model is ready and (with ``expect_model_id``) it
        serves our model id: asked once when Triton becomes ready, again every
        :data:`RECHECK_INTERVAL_S` while it serves other weights (strict: any error is not
        ready)."""
        try:
            client = self._get_client()
            live = await client.is_server_live(client_timeout=self.ready_timeout)
            up = bool(live) and bool(
                await client.is_model_ready(self.model_name, client_timeout=self.ready_timeout)
            )
        except InferenceServerException as e:
            log.debug("triton not ready: %s", e)
            up = False
        if not up:
            self.served_model_id = None  # ask again when it comes back (it may be another)
            return False
        if self.expect_model_id is None or self.served_model_id == self.expect_model_id:
            return True
        if self._refusing():
            return False
        self.served_model_id = None  # ask again (encode refuses nothing meanwhile)
        try:
            await self.encode(_PROBE, self.ready_timeout * 5)
        except Exception as e:  # a mismatch (logged), or Triton failing: not ready either way
            log.debug("triton identity probe failed: %s", e)
            return False
        return True

    async def close(self) -> None:
        """Close the channel (call from the loop that used the encoder)."""
        for task in list(self._retiring):
            task.cancel()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _error(self, e: InferenceServerException, limit: float) -> Exception:
        """Map tritonclient's one exception type (status is a string) onto domain errors."""
        status = str(e.status() or "")
        message = str(e.message() or "")
        lowered = message.lower()
        log.warning("triton %s %s: %s %s", self.address, self.model_name, status, message)
        if status == "StatusCode.DEADLINE_EXCEEDED" or (
            # Triton rejects a request still queued after its timeout with UNAVAILABLE; gRPC's
            # own ping or keepalive timeout (a hung Triton) is no deadline: it stays
            # UNAVAILABLE, which the SDK retries.
            status == "StatusCode.UNAVAILABLE"
            and "timeout" in lowered
            and not ("ping timeout" in lowered or "keepalive" in lowered)
        ):
            return DeadlineExceeded(f"image encoder: no result within {limit:g}s")
        if "queue" in lowered and ("exceed" in lowered or "full" in lowered):
            return Unavailable("image encoder overloaded (Triton queue full); retry later")
        if status == "StatusCode.UNAVAILABLE":
            return Unavailable("image encoder unreachable (Triton is down or restarting)")
        if "unknown model" in lowered or "not ready" in lowered or "not found" in lowered:
            return Unavailable(f"image encoder model {self.model_name} is not loaded on Triton")
        # Anything else is a fault on our side of the contract: INTERNAL, details in the log.
        return RuntimeError(f"Triton {self.model_name}: {status} {message}")


#: SAM 2's three outputs and their shapes (``SAM2ImagePredictor._features``: the image embed,
#: then the high-resolution maps, finest first).
SAM2_OUTPUTS = {
    "IMAGE_EMBED": (256, 64, 64),
    "HIGH_RES_0": (32, 256, 256),
    "HIGH_RES_1": (64, 128, 128),
}


class Sam2TritonEncoder(TritonEncoder):
    """Encodes images for a SAM 2 / 2.1 model on Triton (``triton_models/
    sam_image_encoder_sam2*``); implements :class:`samserve.core.encoder.Encoder`.

    The image is resized here exactly as ``SAM2Transforms`` resizes it (float, to a 1024
    square, aspect ratio not kept) and sent as FP32 [3, 1024, 1024] before normalisation; the
    model normalises and returns the three tensors the decoder needs, and its ``MODEL_ID``.
    Arguments, channel, readiness, identity check and error mapping as :class:`TritonEncoder`.
    """

    async def encode(  # type: ignore[override]
        self, input_image: np.ndarray, timeout: float | None = None
    ) -> tuple[np.ndarray, ...]:
        """Embed one image.

        Args:
            input_image: the decoded (H, W, 3) uint8 RGB image, any size.
            timeout: what remains of the caller's deadline, seconds (see
                :meth:`TritonEncoder.encode`).

        Returns:
            The (256, 64, 64) image embedding and the (32, 256, 256) and (64, 128, 128)
            high-resolution maps, float32, as ``SAM2ImagePredictor.set_image`` computes them.

        Raises:
            Unavailable, DeadlineExceeded: as :meth:`TritonEncoder.encode`.
            ValueError: ``input_image`` is not a uint8 RGB image.
        """
        from samserve.core.sam2.encoder import resize_unnormalized

        if input_image.dtype != np.uint8 or input_image.ndim != 3 or input_image.shape[2] != 3:
            raise ValueError(
                f"input_image must be (h, w, 3) uint8, got {input_image.shape} {input_image.dtype}"
            )
        if self._refusing():
            raise Unavailable(
                f"image encoder on Triton serves other weights ({self.served_model_id}, not "
                f"{self.expect_model_id})"
            )
        resized = await asyncio.to_thread(resize_unnormalized, input_image, IMG_SIZE)
        image = InferInput("IMAGE", [1, *resized.shape], "FP32")
        image.set_data_from_numpy(resized[None])
        result = await self._infer([image], list(SAM2_OUTPUTS), timeout)
        out: list[np.ndarray] = []
        for name, shape in SAM2_OUTPUTS.items():
            features = result.as_numpy(name)
            if features is None or features.shape != (1, *shape):
                got = None if features is None else features.shape
                raise RuntimeError(f"Triton model {self.model_name} returned {name} {got}")
            # as_numpy views the response buffer (read-only, maybe float16): our own copy.
            out.append(np.array(features[0], dtype=np.float32))
        return tuple(out)
