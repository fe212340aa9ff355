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


@pytest.mark.parametrize("layout", ["zip", "legacy", "float16"])
def test_decoder_only_model_has_the_whole_models_id_and_outputs(tmp_path, layout) -> None:
    """parts="decoder" never builds the image encoder from a file, yet the id is the same
    (the checksum streams the file) and the prompt encoder and mask decoder answer alike."""
    from segment_anything.modeling import ImageEncoderViT

    from samserve.core.models import DECODER, ImageEncoderStub

    whole = load_model("tiny", "random", seed=3)
    state = whole.sam.state_dict()
    if layout == "float16":
        state = {k: v.half() for k, v in state.items()}
    path = tmp_path / "w.pth"
    torch.save(state, path, _use_new_zipfile_serialization=layout != "legacy")
    reference = load_model("tiny", path)
    lean = load_model("tiny", path, parts=DECODER)
    assert lean.model_id == reference.model_id and lean.parts == DECODER
    assert isinstance(lean.sam.image_encoder, ImageEncoderStub)
    assert not any(isinstance(m, ImageEncoderViT) for m in lean.sam.modules())
    assert not any(k.startswith("image_encoder.") for k in lean.sam.state_dict())
    assert lean.sam.image_encoder.img_size == 1024
    torch.testing.assert_close(lean.sam.pixel_mean, reference.sam.pixel_mean)
    emb = torch.randn(1, 256, 64, 64)
    points = (torch.tensor([[[100.0, 200.0]]]), torch.tensor([[1]]))
    outs = []
    for sam in (reference.sam, lean.sam):
        with torch.inference_mode():
            sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
            outs.append(
                sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
            )
    for a, b in zip(outs[0], outs[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="without its image encoder"):
        lean.sam.image_encoder(torch.zeros(1, 3, 1024, 1024))


def test_decoder_only_refuses_a_checkpoint_that_does_not_fit(tmp_path) -> None:
    from samserve.core.models import DECODER

    state = load_model("tiny", "random").sam.state_dict()
    path = tmp_path / "w.pth"
    torch.save({k: v for k, v in state.items() if "neck" not in k}, path)
    with pytest.raises(InvalidInput, match="does not fit"):
        load_model("tiny", path, parts=DECODER)
    key = next(k for k in state if k.startswith("mask_decoder."))
    torch.save({**state, key: torch.zeros(3)}, path)
    with pytest.raises(InvalidInput, match="does not fit"):
        load_model("tiny", path, parts=DECODER)


def test_the_model_id_names_the_encoders_compute_dtype() -> None:
    import dataclasses

    from samserve.core.models import encoder_model_id

    model = load_model("tiny", "random")
    assert model.model_id == encoder_model_id("tiny", model.weights_sha256)
    bf16 = dataclasses.replace(model, encoder_dtype="bfloat16")
    assert bf16.model_id == model.model_id + "-bf16"
    assert dataclasses.replace(model, encoder_dtype="float16").model_id.endswith("-fp16")
    with pytest.raises(ValueError):
        encoder_model_id("tiny", model.weights_sha256, "int8")
