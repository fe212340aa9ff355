"""SAM 2 variants: names, families, seeded random weights, official .pt checkpoints, model id."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samserve.cli.checkpoint import model_id as checkpoint_model_id
from samserve.core.errors import InvalidInput
from samserve.core.models import RandomWeightsWarning, load_model
from samserve.core.variants import SAM2_VARIANTS, VARIANTS, family_of

pytest.importorskip("sam2")


def test_variant_names_and_families() -> None:
    for name in ("sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"):
        assert name in VARIANTS and family_of(name) == "sam2"
    assert {f"sam2_hiera_{s}" for s in ("t", "s", "b+", "l")} <= set(SAM2_VARIANTS)
    assert family_of("vit_h") == family_of("tiny") == "sam1"


@pytest.fixture(scope="module")
def tiny2():
    return load_model("sam2_tiny", "random", seed=0)


def test_random_weights_are_seeded_and_loud(tiny2) -> None:
    assert tiny2.family == "sam2"
    assert tiny2.model_id.startswith("sam2_tiny-") and len(tiny2.model_id) == len("sam2_tiny-") + 16
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        again = load_model("sam2_tiny", "random", seed=0)
    assert again.model_id == tiny2.model_id
    assert tiny2.source == "random(seed=0)"


def test_official_checkpoint_layout_loads_with_the_same_id(tiny2, tmp_path) -> None:
    path = tmp_path / "sam2_tiny.pt"
    torch.save({"model": tiny2.sam.state_dict()}, path)
    loaded = load_model("sam2_tiny", path)
    assert loaded.model_id == tiny2.model_id
    assert loaded.public_source == "checkpoint"
    # `samserve checkpoint id` gives the id the services compute (deploy init steps use it).
    assert checkpoint_model_id(path, "sam2_tiny") == tiny2.model_id
    a = next(iter(tiny2.sam.state_dict().values()))
    np.testing.assert_array_equal(next(iter(loaded.sam.state_dict().values())), a)


def test_a_checkpoint_of_another_model_does_not_fit(tmp_path) -> None:
    path = tmp_path / "wrong.pt"
    torch.save({"model": {"image_encoder.bogus": torch.zeros(3)}}, path)
    with pytest.raises(InvalidInput, match="does not fit sam2_tiny"):
        load_model("sam2_tiny", path)


def test_sam2_is_refused_where_it_is_not_supported_yet() -> None:
    import argparse

    from samserve.cli.export_onnx import add_cli_args, run
    from samserve.core.errors import ConfigError

    parser = argparse.ArgumentParser()
    add_cli_args(parser, {})
    with pytest.raises(ConfigError, match="SAM 1 decoders only"):
        run(parser.parse_args(["--model", "sam2.1_hiera_t", "--out", "unused"]))
