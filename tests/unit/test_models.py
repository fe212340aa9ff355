"""Model registry: official builders, seeded random weights, checksums, checkpoints."""

from __future__ import annotations

import pytest
import torch

from samserve.core.errors import InvalidInput
from samserve.core.models import RandomWeightsWarning, load_model


def test_random_weights_are_deterministic_and_loud() -> None:
    with pytest.warns(RandomWeightsWarning):
        a = load_model("tiny", "random", seed=3)
    b = load_model("tiny", "random", seed=3)
    c = load_model("tiny", "random", seed=4)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert a.model_id.startswith("tiny-")


def test_checkpoint_round_trip(tmp_path) -> None:
    a = load_model("tiny", "random", seed=5)
    path = tmp_path / "tiny.pth"
    torch.save(a.sam.state_dict(), path)
    b = load_model("tiny", path)
    assert b.weights_sha256 == a.weights_sha256
    assert b.source == str(path)


def test_bad_requests() -> None:
    with pytest.raises(InvalidInput, match="unknown model"):
        load_model("vit_x")
    with pytest.raises(InvalidInput, match="not found"):
        load_model("tiny", "/nonexistent.pth")


def test_wrong_architecture_is_refused(tmp_path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, path)
    with pytest.raises(InvalidInput, match="does not fit"):
        load_model("tiny", path)
