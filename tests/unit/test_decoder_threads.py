"""Decoder workers set their own intra-op threads; adaptive threads share the CPUs out."""

from __future__ import annotations

import threading

import torch

from samserve.core.decoder import Decoder
from samserve.core.metrics import Metrics
from samserve.core.models import load_model


def _decoder(workers: int, threads: int, cpus: int) -> Decoder:
    sam = load_model("tiny", "random", seed=0).sam
    return Decoder(variant="tiny", model_id="m", sam=sam, store=None, metrics=Metrics(),  # type: ignore[arg-type]
                   workers=workers, intra_op_threads=threads, cpus=cpus)  # fmt: skip


def test_fixed_threads_per_worker_leave_the_process_alone() -> None:
    before = torch.get_num_threads()
    dec = _decoder(2, 1, 4)
    seen = dec._pool.submit(dec._threaded, torch.get_num_threads).result()
    assert seen == 1
    assert torch.get_num_threads() == before


def test_adaptive_threads() -> None:
    """A lone call gets every CPU; a call that starts while another runs gets half (threads
    are chosen when a call starts)."""
    dec = _decoder(2, 0, 4)
    assert dec._pool.submit(dec._threaded, torch.get_num_threads).result() == 4
    barrier = threading.Barrier(2)

    def together() -> int:
        barrier.wait()
        n = torch.get_num_threads()
        barrier.wait()
        return n

    a = dec._pool.submit(dec._threaded, together)
    b = dec._pool.submit(dec._threaded, together)
    assert sorted([a.result(), b.result()]) == [2, 4]
