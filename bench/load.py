"""Closed-loop load on Segment: does admission keep latency bounded, refusals fast and health up?

    python bench/load.py [--callers 64] [--seconds 20] [--runs 3] [--height 1200 --width 1800]

One `samserve up` (tiny, shipped weights) in another process. First a quiet phase: one caller,
``--quiet-calls`` sequential calls (p50 latency, calls/s). Then ``--callers`` asyncio callers with
no think time for ``--seconds``, each sending single-point multimask Segment calls over raw
grpc.aio stubs (no client retries, so every refusal is seen as the server sent it), while a
health checker asks grpc.health.v1 every 100 ms. Reported per run and as the median of runs:

- admitted p99 / quiet p50 (target <= 10)
- refused p99 (target <= 0.5 s) and the share refused
- goodput (OK calls/s) / quiet rate (target >= 0.7)
- health-check p99 (target <= 1 s)
- peak memory of the stack (its cgroup's max_usage_in_bytes as root, else VmHWM summed)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile_ms, samserve_up


def _request(image_id: str, i: int) -> object:
    from samserve_client.pb import common_pb2, decoder_pb2

    point = common_pb2.Point(x=100 + (i % 50) * 20, y=300, label=1)
    return decoder_pb2.SegmentRequest(
        image_id=image_id,
        prompts=[decoder_pb2.Prompt(points=[point])],
        multimask_output=True,
    )


def _channel(address: str):  # type: ignore[no-untyped-def]
    import grpc

    return grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 << 20)]
    )


async def quiet(address: str, image_id: str, calls: int) -> tuple[float, float]:
    """(p50 seconds, calls per second) of one caller."""
    from samserve_client.pb import decoder_pb2_grpc

    async with _channel(address) as channel:
        stub = decoder_pb2_grpc.DecoderServiceStub(channel)
        for i in range(3):
            await stub.Segment(_request(image_id, i), timeout=60)
        times = []
        start = time.perf_counter()
        for i in range(calls):
            t = time.perf_counter()
            await stub.Segment(_request(image_id, i), timeout=60)
            times.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    return float(np.median(times)), calls / elapsed


async def load(address: str, image_id: str, callers: int, seconds: float) -> dict[str, list[float]]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from samserve_client.pb import decoder_pb2_grpc

    out: dict[str, list[float]] = {"ok": [], "refused": [], "other": [], "health": []}
    end = time.perf_counter() + seconds

    async def caller(k: int) -> None:
        async with _channel(address) as channel:
            stub = decoder_pb2_grpc.DecoderServiceStub(channel)
            i = k
            while time.perf_counter() < end:
                t = time.perf_counter()
                try:
                    await stub.Segment(_request(image_id, i), timeout=30)
                    out["ok"].append(time.perf_counter() - t)
                except grpc.aio.AioRpcError as e:
                    key = "refused" if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "other"
                    out[key].append(time.perf_counter() - t)
                i += callers

    async def health() -> None:
        async with _channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.perf_counter() < end:
                t = time.perf_counter()
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                out["health"].append(time.perf_counter() - t)
                await asyncio.sleep(0.1)

    await asyncio.gather(*(caller(k) for k in range(callers)), health())
    return out


def _peak_bytes(pid: int) -> int:
    """VmHWM of ``pid`` and its children (the services and their Redis)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        status = Path(f"/proc/{p}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
    return total


def one_run(args: argparse.Namespace) -> dict[str, float]:
    from samserve_client import SamClient
    from tools.shapes import make_shapes_image

    image = make_shapes_image(seed=3, height=args.height, width=args.width).image
    with samserve_up("--model", "tiny") as ready:
        embedding, decoder = str(ready["embedding"]), str(ready["decoder"])
        with SamClient(embedding, decoder) as client:
            image_id = client.embed(image).image_id
        p50, rate = asyncio.run(quiet(decoder, image_id, args.quiet_calls))
        res = asyncio.run(load(decoder, image_id, args.callers, args.seconds))
        peak = _peak_bytes(int(ready["pid"])) if "pid" in ready else 0
    ok, refused = res["ok"], res["refused"]
    total = len(ok) + len(refused) + len(res["other"])
    row = {
        "quiet_p50_ms": p50 * 1000,
        "quiet_rate": rate,
        "admitted_p50_ms": percentile_ms(ok, 50) if ok else float("nan"),
        "admitted_p99_ms": percentile_ms(ok, 99) if ok else float("nan"),
        "admitted_p99_over_quiet_p50": (percentile_ms(ok, 99) / 1000 / p50) if ok else float("nan"),
        "refused_p99_ms": percentile_ms(refused, 99) if refused else 0.0,
        "refused_share": len(refused) / max(total, 1),
        "other_errors": float(len(res["other"])),
        "goodput": len(ok) / args.seconds,
        "goodput_over_quiet_rate": len(ok) / args.seconds / rate,
        "health_p99_ms": percentile_ms(res["health"], 99),
        "peak_mib": peak / 2**20,
    }
    print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quiet-calls", type=int, default=30)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--width", type=int, default=1800)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    rows = [one_run(args) for _ in range(args.runs)]
    print(f"\nmedian of {len(rows)} runs, {args.callers} callers x {args.seconds:g} s:")
    targets = {
        "admitted_p99_over_quiet_p50": "<= 10",
        "refused_p99_ms": "<= 500",
        "goodput_over_quiet_rate": ">= 0.7",
        "health_p99_ms": "<= 1000",
    }
    for key in rows[0]:
        value = statistics.median(r[key] for r in rows)
        print(f"  {key:32s} {value:10.3f}  {targets.get(key, '')}")


if __name__ == "__main__":
    main()
