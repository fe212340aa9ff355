"""The SDK's one call logic, run against a scripted executor (no sockets): twins' surfaces,
deadlines, hash-first uploads, parameters sent as set, and Refine resumption."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from samserve_client import (
    AsyncRefineSession,
    AsyncSamClient,
    EmbeddingRef,
    InvalidArgumentError,
    ModelInfo,
    NotFoundError,
    RefineSession,
    SamClient,
    UnavailableError,
    _convert,
    _plan,
)
from samserve_client._channel import (
    IDEMPOTENT_METHODS,
    NOT_RETRIED_METHODS,
    RETRYABLE_STATUS_CODES,
    SERVICE_CONFIG,
    credentials,
    is_loopback,
)
from samserve_client._refine import MAX_RESUMES, Exchange, Open, RefineSteps
from samserve_client.pb import decoder_pb2, embedding_pb2

# --- the twins ------------------------------------------------------------------------------

_ASYNC_NAMES = {"__enter__": "__aenter__", "__exit__": "__aexit__"}
_TYPE_NAMES = {"SamClient": "AsyncSamClient", "RefineSession": "AsyncRefineSession"}


def _public(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_")
        or name in ("__init__", "__enter__", "__exit__", "__aenter__", "__aexit__")
    }


@pytest.mark.parametrize(
    ("sync_cls", "async_cls", "plain"),
    [
        (SamClient, AsyncSamClient, {"__init__", "refine"}),
        (RefineSession, AsyncRefineSession, {"__init__"}),
    ],
)
def test_twins_have_the_same_surface(sync_cls, async_cls, plain) -> None:
    """Same public names and parameters; the async twin's are coroutines, except ``plain``."""
    sync_members = _public(sync_cls)
    async_members = _public(async_cls)
    assert {_ASYNC_NAMES.get(n, n) for n in sync_members} == set(async_members)
    for name, member in sync_members.items():
        twin = async_members[_ASYNC_NAMES.get(name, name)]
        if isinstance(member, property):
            assert isinstance(twin, property), name
            continue
        if name == "__init__" and sync_cls is RefineSession:
            continue  # built by the clients, not by users
        assert not inspect.iscoroutinefunction(member), name
        assert inspect.iscoroutinefunction(twin) == (name not in plain), name
        sig, async_sig = inspect.signature(member), inspect.signature(twin)
        assert list(sig.parameters.values()) == list(async_sig.parameters.values()), name
        returns = str(sig.return_annotation)
        for sync_name, async_name in _TYPE_NAMES.items():
            returns = returns.replace(sync_name, async_name)
        assert returns == str(async_sig.return_annotation), name


# --- deadlines ------------------------------------------------------------------------------


def test_timeout_none_is_the_default_and_zero_is_zero() -> None:
    assert _plan.timeout_of(None, 7.0) == 7.0
    assert _plan.timeout_of(0, 7.0) == 0.0
    assert _plan.timeout_of(2.5, 7.0) == 2.5
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            _plan.timeout_of(bad, 7.0)


def test_negative_timeouts_are_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="timeout"):
        SamClient("127.0.0.1:1", "127.0.0.1:1", timeout=-1)
    # Channels connect lazily: nothing is dialled here.
    with SamClient("127.0.0.1:1", "127.0.0.1:1", timeout=0) as client:
        assert client.timeout == 0.0
        with pytest.raises(ValueError, match="timeout"):
            client.embed(b"x", timeout=-0.5)
        with pytest.raises(ValueError, match="timeout"):
            client.refine(b"x", timeout=-1)


# --- plans against a scripted executor ------------------------------------------------------


class Script:
    """An executor that records every call and answers from ``answer(call)``."""

    def __init__(self, answer: Callable[[Any], Any]) -> None:
        self.answer = answer
        self.calls: list[Any] = []

    def __call__(self, call: Any) -> Any:
        self.calls.append(call)
        return self.answer(call)

    @property
    def methods(self) -> list[str]:
        return [getattr(c, "method", type(c).__name__) for c in self.calls]


OPTS = _plan.Options(model="tiny", timeout=3.0)
SEGMENT = decoder_pb2.SegmentResponse(height=2, width=2, results=[decoder_pb2.PromptResult()])


def _not_found_once(answers: dict[str, Any]) -> Callable[[Any], Any]:
    seen: set[str] = set()

    def answer(call: Any) -> Any:
        if call.method in ("Segment", "SegmentEverything") and call.method not in seen:
            seen.add(call.method)
            raise NotFoundError("no embedding")
        return answers[call.method]

    return answer


def test_hash_first_uploads_once_then_asks_again() -> None:
    script = Script(_not_found_once({"Segment": SEGMENT, "Embed": embedding_pb2.EmbedResponse()}))
    plan = _plan.segment_prompts(
        b"png bytes",
        [_convert.single_prompt([[1, 1]], None, None, None)],
        multimask_output=True,
        return_low_res_logits=False,
        mask_encoding="bitmask",
        opts=OPTS,
    )
    results = _plan.run_sync(plan, script)
    assert len(results) == 1
    assert script.methods == ["Segment", "Embed", "Segment"]
    assert {c.timeout for c in script.calls} == {3.0}
    assert script.calls[1].request.image == b"png bytes"
    assert script.calls[1].request.model == "tiny"


def test_a_reference_is_never_uploaded() -> None:
    script = Script(_not_found_once({}))
    ref = EmbeddingRef("ab" * 32, True, "m", 2, 2)
    plan = _plan.segment_prompts(
        ref,
        [_convert.single_prompt([[1, 1]], None, None, None)],
        multimask_output=True,
        return_low_res_logits=False,
        mask_encoding="bitmask",
        opts=OPTS,
    )
    with pytest.raises(NotFoundError):
        _plan.run_sync(plan, script)
    assert script.methods == ["Segment"]


@pytest.mark.parametrize(
    ("params", "upload", "overlap"),
    [
        ({"points_per_side": 4}, "Embed", None),
        ({"crop_n_layers": 1}, "EmbedCrops", None),
        ({"crop_n_layers": 1, "crop_overlap_ratio": 0.25}, "EmbedCrops", 0.25),
    ],
)
def test_segment_everything_uploads_what_the_call_needs(params, upload, overlap) -> None:
    answers = {
        "SegmentEverything": [],
        "Embed": embedding_pb2.EmbedResponse(),
        "EmbedCrops": embedding_pb2.EmbedCropsResponse(),
    }
    script = Script(_not_found_once(answers))
    assert _plan.run_sync(_plan.segment_everything(b"img", params, OPTS), script) == []
    assert script.methods == ["SegmentEverything", upload, "SegmentEverything"]
    if upload == "EmbedCrops":
        crops = script.calls[1].request
        assert crops.crop_n_layers == params["crop_n_layers"]
        assert crops.HasField("crop_overlap_ratio") == (overlap is not None)
        if overlap is not None:
            assert crops.crop_overlap_ratio == overlap


def test_only_the_parameters_set_are_sent() -> None:
    empty = _convert.segment_everything_request("id", "", {})
    assert [f.name for f, _ in empty.ListFields()] == ["image_id"]
    msg = _convert.segment_everything_request(
        "id", "", {"points_per_side": 8, "pred_iou_thresh": 0.5, "output_mode": "coco_rle"}
    )
    assert {f.name for f, _ in msg.ListFields()} == {
        "image_id",
        "points_per_side",
        "pred_iou_thresh",
        "output_mode",
    }
    assert msg.pred_iou_thresh == 0.5


def test_parameter_names_come_from_the_proto() -> None:
    fields = decoder_pb2.SegmentEverythingRequest.DESCRIPTOR.fields
    assert set(_convert.EVERYTHING_PARAMETERS) == {f.name for f in fields} - {"image_id", "model"}
    assert not hasattr(_convert, "AMG_DEFAULTS")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"point_grids": []}, "unknown segment_everything parameters"),
        ({"points_per_side": "many"}, "points_per_side"),
        ({"pred_iou_thresh": "high"}, "pred_iou_thresh"),
    ],
)
def test_bad_parameters_are_refused_before_sending(params, match) -> None:
    script = Script(lambda call: pytest.fail("nothing should be sent"))
    with pytest.raises(InvalidArgumentError, match=match):
        _plan.run_sync(_plan.segment_everything(b"img", params, OPTS), script)
    assert script.calls == []


def test_model_info_is_an_sdk_type() -> None:
    resp = embedding_pb2.GetModelInfoResponse(
        variant="tiny",
        model_id="tiny-ab",
        weights_sha256="ab" * 32,
        source="shipped",
        family="sam1",
    )
    info = _plan.run_sync(_plan.model_info(OPTS), Script(lambda call: resp))
    assert info == ModelInfo("tiny", "tiny-ab", "ab" * 32, "shipped", "sam1")


# --- Refine: uploads and resumption ---------------------------------------------------------


class FakeDecoder:
    """A decoder whose sessions live per stream, as the server's do; ``fail`` scripts errors
    by exchange number (counted over the whole test)."""

    def __init__(self, fail: Mapping[int, Exception] | None = None, stored: bool = True) -> None:
        self.fail = fail or {}
        self.stored = stored
        self.exchanges = 0
        self.session: list[decoder_pb2.RefineRequest] = []

    def __call__(self, call: Any) -> Any:
        if isinstance(call, Open):
            self.session = []
            return None
        if isinstance(call, Exchange):
            self.exchanges += 1
            if self.exchanges in self.fail:
                raise self.fail[self.exchanges]
            if not self.stored:
                raise NotFoundError("no embedding")
            self.session.append(call.request)
            return decoder_pb2.RefineResponse(step=len(self.session), height=1, width=1)
        assert call.method == "Embed"
        self.stored = True
        return embedding_pb2.EmbedResponse()


def _steps(data: bytes | None = b"img") -> RefineSteps:
    return RefineSteps(
        data,
        "ab" * 32,
        OPTS,
        60.0,
        multimask_output=False,
        mask_encoding="bitmask",
        return_low_res_logits=False,
    )


def _click(steps: RefineSteps, script: Script, x: float) -> None:
    _plan.run_sync(steps.step(steps.request((x, 1.0, 1), None)), script)


def _trace(script: Script) -> list[str]:
    return [
        f"Exchange({c.request.point.x:g})" if isinstance(c, Exchange) else script.methods[i]
        for i, c in enumerate(script.calls)
    ]


def test_refine_resumes_a_stream_that_ended_by_replaying_its_steps() -> None:
    decoder = FakeDecoder(fail={3: UnavailableError("max connection age")})
    script = Script(decoder)
    steps = _steps()
    for x in (1, 2, 3, 4):
        _click(steps, script, x)
    assert steps.steps == 4
    assert _trace(script) == [
        "Open", "Exchange(1)", "Exchange(2)", "Exchange(3)",
        "Open", "Exchange(1)", "Exchange(2)", "Exchange(3)", "Exchange(4)",
    ]  # fmt: skip
    assert [r.point.x for r in decoder.session] == [1, 2, 3, 4]


def test_refine_gives_up_after_max_resumes() -> None:
    down = {n: UnavailableError("down") for n in range(2, 20)}
    script = Script(FakeDecoder(fail=down))
    steps = _steps()
    _click(steps, script, 1)
    with pytest.raises(UnavailableError):
        _click(steps, script, 2)
    assert script.methods.count("Open") == 1 + MAX_RESUMES  # the first stream, then resumes


def test_refine_uploads_on_not_found_once() -> None:
    script = Script(FakeDecoder(stored=False))
    steps = _steps()
    _click(steps, script, 1)
    assert _trace(script) == ["Open", "Exchange(1)", "Embed", "Open", "Exchange(1)"]
    with pytest.raises(NotFoundError):
        _click(_steps(data=None), Script(FakeDecoder(stored=False)), 1)


def test_refine_after_an_error_replays_on_a_new_stream() -> None:
    script = Script(FakeDecoder(fail={2: InvalidArgumentError("label")}))
    steps = _steps()
    _click(steps, script, 1)
    with pytest.raises(InvalidArgumentError):
        _click(steps, script, 2)
    _click(steps, script, 3)
    assert steps.steps == 2
    assert _trace(script)[-3:] == ["Open", "Exchange(1)", "Exchange(3)"]


def test_every_rpc_has_a_retry_decision() -> None:
    """A new RPC must be put in IDEMPOTENT_METHODS or NOT_RETRIED_METHODS on purpose."""
    rpcs = {
        (service.full_name, method.name)
        for module in (embedding_pb2, decoder_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    retried, not_retried = set(IDEMPOTENT_METHODS), set(NOT_RETRIED_METHODS)
    assert not retried & not_retried
    assert retried | not_retried == rpcs
    policy = SERVICE_CONFIG["methodConfig"][0]
    assert policy["retryPolicy"]["retryableStatusCodes"] == list(RETRYABLE_STATUS_CODES)
    assert {(n["service"], n["method"]) for n in policy["name"]} == retried


# --- credentials ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", True),
        ("dns:///localhost:50051", True),
        ("unix:/tmp/samserve.sock", True),
        ("10.0.0.5:50051", False),
        ("decoder.default.svc:50052", False),
        ("dns:///decoder:50052", False),
        ("ipv4:127.0.0.1:1,10.0.0.1:2", False),
    ],
)
def test_loopback_targets(target: str, local: bool) -> None:
    assert is_loopback(target) is local


def test_credentials_fail_closed() -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        credentials("127.0.0.1:1", tls_cert=b"cert")
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        credentials("127.0.0.1:1", tls_ca=b"ca", tls_key=b"key")
    with pytest.raises(ValueError, match="plaintext"):
        credentials("decoder.prod:50052", token="secret")
    with pytest.raises(ValueError, match="plaintext"):
        SamClient("127.0.0.1:50051", "10.1.2.3:50052", token="secret")
    with pytest.raises(ValueError, match="empty"):
        credentials("127.0.0.1:1", token="")
    assert credentials("127.0.0.1:1") is None
    assert credentials("127.0.0.1:1", token="secret") is not None
    assert credentials("decoder.prod:50052", tls_ca=b"ca", token="secret") is not None
