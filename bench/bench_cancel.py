"""Do abandoned heavy calls keep costing? Segment latency after two SegmentEverything calls expire.

    python bench/bench_cancel.py [--runs 3] [--calls 20] [--height 480 --width 640]

One `samserve up` (tiny, shipped weights, 2 decoder workers) in another process. Per run:
1. quiet: ``--calls`` sequential single-point multimask Segment calls (p50);
2. two SegmentEverything calls at once (64x64 grid, both thresholds 0: minutes of work if
   nobody stopped it), each with a 2 s deadline; both end DEADLINE_EXCEEDED;
3. right after they expire, ``--calls`` Segment calls again (p50), while the abandoned work would
   still be running if it were not cancelled.

Reported: quiet p50, after-expiry p50 and their ratio (target: within 3x), per run and as the
median of runs. Without cancellation the second phase waits minutes for a worker.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile_ms, samserve_up


def _segment_p50(stub: object, request: object, calls: int) -> float:
    took = []
    for _ in range(calls):
        start = time.perf_counter()
        stub.Segment(request, timeout=60)  # type: ignore[attr-defined]
        took.append(time.perf_counter() - start)
    return percentile_ms(took, 50)


def one_run(decoder: str, image_id: str, calls: int) -> tuple[float, float, list[str]]:
    import grpc

    from samserve_client.pb import common_pb2, decoder_pb2, decoder_pb2_grpc

    point = common_pb2.Point(x=100, y=100, label=1)
    segment = decoder_pb2.SegmentRequest(
        image_id=image_id, prompts=[decoder_pb2.Prompt(points=[point])], multimask_output=True
    )
    heavy = decoder_pb2.SegmentEverythingRequest(
        image_id=image_id, points_per_side=64, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(decoder, options=options) as channel:
        stub = decoder_pb2_grpc.DecoderServiceStub(channel)
        quiet = _segment_p50(stub, segment, calls)

        def expire() -> str:
            try:
                list(stub.SegmentEverything(heavy, timeout=2.0))
                return "OK"
            except grpc.RpcError as e:
                return str(e.code().name)

        with ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(lambda _: expire(), range(2)))
        after = _segment_p50(stub, segment, calls)
    return quiet, after, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()

    from samserve_client import SamClient
    from tools.shapes import make_shapes_image

    image = make_shapes_image(seed=3, height=args.height, width=args.width).image
    ratios = []
    with samserve_up("--model", "tiny") as ready:
        with SamClient(str(ready["embedding"]), str(ready["decoder"])) as client:
            image_id = client.embed(image).image_id
        for run in range(args.runs):
            quiet, after, statuses = one_run(str(ready["decoder"]), image_id, args.calls)
            ratios.append(after / quiet)
            print(
                f"run {run + 1}: quiet Segment p50 {quiet:.1f} ms; heavy calls ended "
                f"{', '.join(statuses)}; Segment p50 right after {after:.1f} ms; "
                f"ratio {after / quiet:.2f}",
                flush=True,
            )
    median = statistics.median(ratios)
    print(f"median of {args.runs}: after-expiry / quiet Segment p50 = {median:.2f} (target <= 3)")


if __name__ == "__main__":
    main()
