"""The Triton client under traffic while its target's address list changes (issue 12).

The target is a name served by a DNS server in this process (``tests/dnsserver.py``) and
resolved by gRPC's c-ares resolver (``dns://127.0.0.1:<port>/triton.samserve.test:<port>``);
two tritonservers with the same random tiny weights listen on the same port at 127.0.0.1 and
127.0.0.2 (Linux routes all of 127/8 to lo), and the test changes what the name resolves to
while encodes run, as a headless Service does when pods come and go. A second test stops a
Triton in the middle of a call (no RST: a lost node), which must cost that call no more than
the keepalive timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import pytest

if importlib.util.find_spec("tritonclient") is None:
    pytest.skip(
        "tritonclient is not installed (pip install 'samserve[triton]')", allow_module_level=True
    )

from samserve.core.encoder import resize_for_encoder
from samserve.core.errors import Unavailable
from samserve.core.models import LoadedModel
from samserve.core.triton_encoder import KEEPALIVE_TIMEOUT_S, TritonEncoder
from samserve.procs.triton import TritonModelOptions, TritonProcess, find_tritonserver
from tests.dnsserver import DnsServer
from tools.shapes import make_shapes_image

if find_tritonserver() is None:
    pytest.skip(
        "no tritonserver binary (pip install 'samserve[triton]': the nvidia-pytriton wheel)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.triton, pytest.mark.integration, pytest.mark.timeout(180)]

NAME = "triton.samserve.test"
HOST_A, HOST_B = "127.0.0.1", "127.0.0.2"
#: Seconds between fresh channels (each resolves the name again) and between keepalive pings
#: (tritonserver permits one per 5 s: procs/triton.py's flags).
CHANNEL_AGE = 1.0
KEEPALIVE = 5.0
#: Encodes in flight at any time.
CONCURRENCY = 2
#: Calls finished after the second server's first one, to see how the load is shared.
SHARED_CALLS = 10


@dataclass
class Call:
    started: float
    ended: float
    error: Exception | None


def _same_free_port(*hosts: str) -> int:
    """A port free on every one of ``hosts`` a moment ago.

    Raises:
        OSError: a host is no local address (EADDRNOTAVAIL).
    """
    for _ in range(20):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def _served(triton: TritonProcess) -> int:
    """Requests the server has answered successfully (Triton's metrics)."""
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as r:
        text = r.read().decode()
    name = "nv_inference_request_success"
    m = re.search(rf'^{name}\{{model="{triton.model_name}",version="1"\}} (\d+)', text, re.M)
    assert m is not None, f"{name} missing from Triton's metrics"
    return int(m.group(1))


def _start(host: str, port: int) -> TritonProcess:
    options = TritonModelOptions(
        "tiny", "random", seed=0, device="cpu", parameters={"warmup": "false", "torch_threads": "1"}
    )
    return TritonProcess.start(options, host=host, grpc_port=port)


async def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate()`` (sync, run in a thread) until true; returns the seconds it took."""
    start = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def test_a_new_triton_gets_a_share_and_a_killed_one_costs_no_call(
    tiny_random: LoadedModel,
) -> None:
    """Phase 1: the name lists A only, every call goes there. Phase 2: B starts mid-run and
    joins the name: within a channel age plus a call, B answers calls, and then about half of
    them. Phase 3: A leaves the name and is SIGKILLed mid-traffic: a call in flight there may
    fail, UNAVAILABLE and within the keepalive timeout (the SDK retries it); every later call
    succeeds, on B."""
    try:
        port = _same_free_port(HOST_A, HOST_B)
    except OSError as e:
        pytest.skip(f"{HOST_B} is not a local address here (Linux routes 127/8 to lo): {e}")
    image = resize_for_encoder(make_shapes_image(seed=11, height=120, width=160).image)
    calls: list[Call] = []
    stop = asyncio.Event()
    workers: list[asyncio.Task[None]] = []
    starting_b: asyncio.Task[TritonProcess] | None = None
    t0 = time.monotonic()
    dns = DnsServer(NAME, [HOST_A])
    try:
        a = _start(HOST_A, port)
    except BaseException:
        dns.close()
        raise
    print(f"A ready after {time.monotonic() - t0:.1f}s")
    encoder = TritonEncoder(
        f"dns://{dns.host}:{dns.port}/{NAME}:{port}",
        a.model_name,
        timeout=30,
        expect_model_id=tiny_random.model_id,
        keepalive=KEEPALIVE,
        channel_age=CHANNEL_AGE,
    )

    async def worker() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await encoder.encode(image)
                error = None
            except Exception as e:
                error = e
            calls.append(Call(started, time.monotonic(), error))

    def started_since(t: float) -> list[Call]:
        """The calls started at ``t`` or later and finished."""
        return [c for c in calls if c.started >= t]

    try:
        assert await encoder.ready()
        workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]

        # Phase 1: A alone, while B starts (on 2 shared cores: encodes slow down meanwhile).
        starting_b = asyncio.create_task(asyncio.to_thread(_start, HOST_B, port))
        await _wait_for(lambda: len(calls) >= 4, 60, "4 calls on A")
        b = await starting_b
        print(f"B ready after {time.monotonic() - t0:.1f}s ({len(calls)} calls on A meanwhile)")
        assert [c.error for c in calls if c.error] == []
        assert await asyncio.to_thread(_served, b) == 0  # same port, but not in the name yet
        assert await asyncio.to_thread(_served, a) >= len(calls)

        # Phase 2: B joins the name.
        dns.set_addresses([HOST_A, HOST_B])
        took = await _wait_for(lambda: _served(b) > 0, 30, "B's first call")
        slowest = max(c.ended - c.started for c in calls)
        print(f"B answered its first call {took:.2f}s after joining (slowest call {slowest:.2f}s)")
        # The fresh channel comes with the first call a channel age after the last one; its
        # first call may go to A; the next one, B's, takes a call's time to be counted.
        assert took <= CHANNEL_AGE + 2 * slowest + 2, f"B's first call after {took:.1f}s"
        first_b = time.monotonic()
        a0, b0 = await asyncio.gather(asyncio.to_thread(_served, a), asyncio.to_thread(_served, b))
        await _wait_for(lambda: len(started_since(first_b)) >= SHARED_CALLS, 60, "shared calls")
        a1, b1 = await asyncio.gather(asyncio.to_thread(_served, a), asyncio.to_thread(_served, b))
        share = (b1 - b0) / max(1, (a1 - a0) + (b1 - b0))
        print(f"then A answered {a1 - a0}, B {b1 - b0} calls (B's share {share:.0%})")
        # Round robin over both, on channels a second old: no strict alternation (a fresh
        # channel's first call may go to the endpoint it finds ready first), but no side alone.
        assert 0.15 <= share <= 0.85, f"A {a1 - a0}, B {b1 - b0}"
        assert [c.error for c in calls if c.error] == []

        # Phase 3: A leaves the name and dies (SIGKILL) mid-traffic.
        dns.set_addresses([HOST_B])
        b_before = await asyncio.to_thread(_served, b)
        killed = time.monotonic()  # CONCURRENCY calls are in flight: the workers never rest
        await asyncio.to_thread(a.kill)
        await _wait_for(
            lambda: len(started_since(killed + CHANNEL_AGE)) >= 3, 60, "calls after the kill"
        )
        stop.set()
        await asyncio.gather(*workers)
        b_after = await asyncio.to_thread(_served, b)
        durations = sorted(c.ended - c.started for c in calls)
        print(
            f"{len(calls)} calls, median {durations[len(durations) // 2]:.2f}s, on "
            f"{encoder.channels} channels ({dns.queries} A queries); "
            f"{time.monotonic() - t0:.1f}s in all"
        )
    finally:
        stop.set()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await encoder.close()
        dns.close()
        a.kill()
        if starting_b is not None:
            with contextlib.suppress(Exception):
                # stop() would wait seconds for a graceful exit, for nothing here.
                (await starting_b).kill()

    ended_after_kill = [c for c in calls if c.ended >= killed]
    failed = [c for c in ended_after_kill if c.error is not None]
    later = started_since(killed + CHANNEL_AGE)
    print(
        f"after the kill: {len(ended_after_kill) - len(failed)} calls ok, {len(failed)} failed "
        f"(after {', '.join(f'{c.ended - killed:.2f}s' for c in failed) or '-'}); "
        f"{len(later)} started a channel age later, all on B"
    )
    for c in failed:
        assert isinstance(c.error, Unavailable), repr(c.error)
        assert c.ended - killed <= KEEPALIVE + KEEPALIVE_TIMEOUT_S, f"{c.ended - killed:.1f}s"
    assert len(failed) <= CONCURRENCY
    assert later and all(c.error is None for c in later)
    # A is dead: every call that succeeded after the kill was B's.
    assert b_after - b_before >= len(ended_after_kill) - len(failed)


async def test_a_triton_hung_mid_call_fails_it_within_the_keepalive_timeout(
    tiny_random: LoadedModel,
) -> None:
    """A Triton that stops answering while it holds a call (SIGSTOP after the request went
    out: the kernel still acknowledges every byte, as a wedged host's may) fails that call
    UNAVAILABLE (retried by the SDK) within keepalive + its timeout, not at the deadline."""
    triton = _start(HOST_A, 0)
    encoder = TritonEncoder(
        triton.grpc_address,
        triton.model_name,
        timeout=30,
        expect_model_id=tiny_random.model_id,
        keepalive=KEEPALIVE,
    )
    image = resize_for_encoder(make_shapes_image(seed=12, height=120, width=160).image)
    pid = triton.process.pid
    try:
        assert await encoder.ready()
        for _ in range(5):
            call = asyncio.create_task(encoder.encode(image))
            await asyncio.sleep(0.2)  # the 3 MiB request is out; the encode takes longer
            if call.done():  # too fast this time: the server was not stopped mid-call
                await call
                continue
            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                await call
            except Unavailable:
                break
            os.kill(pid, signal.SIGCONT)  # it answered before the stop: again
        else:
            pytest.fail("no call was in flight when the server stopped")
        took = time.monotonic() - stopped
        print(f"the hung Triton's call failed after {took:.1f}s")
        assert took <= KEEPALIVE + KEEPALIVE_TIMEOUT_S + 3, f"{took:.1f}s"
    finally:
        os.kill(pid, signal.SIGCONT)
        await encoder.close()
        triton.kill()
