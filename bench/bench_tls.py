"""What TLS and a bearer token cost a Segment call, next to plaintext, from one run.

    python bench/bench_tls.py [--calls 60] [--rounds 3] [--height 1200 --width 1800]

Two `samserve up` stacks (tiny, shipped weights) in other processes: one plaintext, one with
mutual TLS and a token file (certificates made here with trustme). The same single-point
multimask Segment goes through the SDK to each, in alternating rounds so both meet the same load;
the table gives the p50 and p99 of all rounds and the ratio (target: p50 ratio <= 1.1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile_ms, print_table, samserve_up


def _round(client: object, ref: object, calls: int) -> list[float]:
    times = []
    for i in range(calls):
        t = time.perf_counter()
        client.segment(ref, points=[[100 + i, 300]])  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--width", type=int, default=1800)
    args = parser.parse_args()

    from samserve_client import SamClient
    from tests.pki import make_pki, token_file
    from tools.shapes import make_shapes_image

    image = make_shapes_image(seed=3, height=args.height, width=args.width).image
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp))
        tokens = token_file(Path(tmp), "bench sekret\n")
        secure = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                  "--tls-client-ca", str(pki.ca), "--auth-tokens", str(tokens)]  # fmt: skip
        with (
            samserve_up("--model", "tiny") as plain,
            samserve_up("--model", "tiny", *secure) as tls,
        ):
            clients = {
                "plaintext": SamClient(str(plain["embedding"]), str(plain["decoder"])),
                "mTLS + token": SamClient(
                    str(tls["embedding"]), str(tls["decoder"]), tls_ca=pki.ca,
                    tls_cert=pki.client_cert, tls_key=pki.client_key, token="sekret",
                ),
            }  # fmt: skip
            refs = {name: c.embed(image) for name, c in clients.items()}
            for name, c in clients.items():
                _round(c, refs[name], 5)  # warm up
            samples: dict[str, list[float]] = {name: [] for name in clients}
            for _ in range(args.rounds):
                for name, c in clients.items():
                    samples[name] += _round(c, refs[name], args.calls)
            for c in clients.values():
                c.close()
    plain_s, tls_s = samples["plaintext"], samples["mTLS + token"]
    rows = []
    for q in (50, 99):
        ref, ours = percentile_ms(plain_s, q), percentile_ms(tls_s, q)
        rows.append((f"Segment p{q}", f"{ref:.1f} ms", f"{ours:.1f} ms", f"{ours / ref:.3f}"))
    print_table(
        f"plaintext (reference) vs mutual TLS + bearer token, {args.rounds} alternating rounds of "
        f"{args.calls} calls, {args.height}x{args.width}",
        rows,
    )


if __name__ == "__main__":
    main()
