"""Peak RSS of a decoder process: the lean model (prompt encoder + mask decoder) vs the whole.

    python bench/bench_decoder_rss.py [--model vit_h] [--checkpoint PATH] [--keep DIR]

Without ``--checkpoint`` a random-weight checkpoint of ``--model`` is written to disk first (a
child process builds it and ``torch.save``s its state dict: 2.5 GB for vit_h). Then, each in a
process of its own:

- ours: ``samserve decoder --model M --checkpoint PATH`` until it logs "serving on" (Redis is
  not needed to start: it runs degraded); its peak RSS is ``VmHWM`` of /proc/PID/status;
- whole model: ``load_model(M, PATH)`` (what a decoder loaded before: the image encoder
  included), peak RSS from ``getrusage``. The issue measured a vit_h decoder at 5.5 GiB.

Both print their model id: they must be equal (the lean one is computed by streaming the
file). Figures taken on a loaded machine swing; the peak, not the time, is the point here.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table

GIB = 1 << 30

_WRITE = """
import sys, torch
from samserve.core.models import random_sam
torch.save(random_sam(sys.argv[1], 0).state_dict(), sys.argv[2])
"""

_WHOLE = """
import json, resource, sys, time
from samserve.core.models import load_model
t = time.perf_counter()
m = load_model(sys.argv[1], sys.argv[2])
print(json.dumps({"model_id": m.model_id, "seconds": time.perf_counter() - t,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def vm_hwm(pid: int) -> int:
    """Peak resident set of ``pid`` in bytes (/proc/PID/status VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def decoder_peak(model: str, checkpoint: Path) -> tuple[int, str, float]:
    """Start ``samserve decoder``, wait until it serves, return (peak RSS, model id, seconds)."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "samserve", "decoder", "--model", model,
             "--checkpoint", str(checkpoint), "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--redis-url", "redis://127.0.0.1:1/0"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            while True:
                log.seek(0)
                text = log.read().decode(errors="replace")
                if "serving on" in text:
                    seconds = time.perf_counter() - start
                    time.sleep(1.0)  # the first health checks and metrics run too
                    peak = vm_hwm(proc.pid)
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"samserve decoder exited:\n{text}")
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(30)
    found = re.search(rf"model {model} \((\S+)\)", text)
    return peak, found.group(1) if found else "?", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_h")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="write the checkpoint here")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="rss-"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = folder / f"{args.model}_random.pth"
        if not checkpoint.is_file():
            print(f"writing a random-weight {args.model} checkpoint to {checkpoint} ...")
            subprocess.run([sys.executable, "-c", _WRITE, args.model, str(checkpoint)], check=True)
    size = checkpoint.stat().st_size
    lean, lean_id, lean_s = decoder_peak(args.model, checkpoint)
    done = subprocess.run(
        [sys.executable, "-c", _WHOLE, args.model, str(checkpoint)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    whole = json.loads(done.stdout.strip().splitlines()[-1])
    print_table(
        f"{args.model} decoder peak RSS (checkpoint {size / GIB:.2f} GiB on disk)",
        [
            (
                "peak RSS",
                f"{whole['peak'] / GIB:.2f} GiB",
                f"{lean / GIB:.2f} GiB",
                f"{lean / whole['peak']:.2f}",
            ),
            ("load time", f"{whole['seconds']:.1f} s", f"{lean_s:.1f} s (to serving)", ""),
            (
                "model id",
                whole["model_id"],
                lean_id,
                "same" if lean_id == whole["model_id"] else "DIFFERS",
            ),
        ],
    )
    if lean_id != whole["model_id"]:
        sys.exit("model ids differ")


if __name__ == "__main__":
    main()
