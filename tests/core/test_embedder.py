import time

import numpy as np
import pytest
import torch
from PIL import Image

from raiox_core.embedder import load_embedder, embedding_model_for
from raiox_core.errors import ModelLoadError
from raiox_core.images import ImageLimits


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8), "L") for _ in range(n)]


def test_untrained_vectors_are_unit_float32_and_labelled(embedder):
    vectors = embedder.encode(images(5), batch_size=2)
    assert vectors.shape == (5, 512) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embedding_model == "ViT-B-32/untrained" and not embedder.trained


def test_batching_does_not_change_vectors(embedder):
    batch = images(4, seed=1)
    together = embedder.encode(batch, batch_size=4)
    alone = np.stack([embedder.encode_one(im) for im in batch])
    assert np.allclose(together, alone, atol=1e-4)


def test_untrained_weights_are_reproducible_across_loads(embedder):
    again = load_embedder("ViT-B-32", "none", "cpu")
    im = images(1, seed=2)
    assert np.allclose(embedder.encode(im), again.encode(im), atol=1e-6)


def test_checkpoint_file_is_loaded_through_the_real_path(embedder, tmp_path):
    # Change the weights before saving, so equal vectors prove the checkpoint (not the seed) was loaded.
    changed = load_embedder("ViT-B-32", "none", "cpu")
    with torch.no_grad():
        changed.model.visual.proj.mul_(-1.0).add_(0.01)
    path = tmp_path / "implants-finetuned.pt"
    torch.save(changed.model.state_dict(), path)
    loaded = load_embedder("ViT-B-32", str(path), "cpu")
    im = images(2, seed=3)
    assert np.allclose(loaded.encode(im), changed.encode(im), atol=1e-5)
    assert not np.allclose(loaded.encode(im), embedder.encode(im), atol=1e-3)
    assert loaded.trained and loaded.embedding_model.startswith("ViT-B-32/file:implants-finetuned.pt@")
    assert loaded.embedding_model == embedding_model_for("ViT-B-32", str(path))


def test_offline_pretrained_tag_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_embedder("ViT-B-32", "laion2b_s34b_b79k", "cpu")
    assert time.monotonic() - start < 10
    assert "RAIOX_PRETRAINED" in str(info.value) and "checkpoint" in str(info.value)


@pytest.mark.parametrize("model, pretrained, fragment", [
    ("ViT-B-32", "no-such-tag", "Unknown pretrained tag"),
    ("ViT-Nope", "none", "Unknown OpenCLIP model"),
    ("ViT-B-32", "/nowhere/weights.pt", "does not exist"),
])
def test_bad_model_settings_are_one_sentence(model, pretrained, fragment):
    with pytest.raises(ModelLoadError, match=fragment) as info:
        load_embedder(model, pretrained, "cpu")
    assert "\n" not in str(info.value)


def cosines(a, b):
    return np.sum(a * b, axis=1)  # both sets are unit vectors


def test_cpu_encodes_int8_within_cosine_0999_of_fp32(embedder):
    # The probe check passed at load (untrained weights have no activation outliers) ...
    assert embedder.precision == "int8" and embedder.int8_min_cosine >= 0.999
    # ... and holds on images it never saw: random noise, and radiographs of other seeds and sizes.
    from raiox_core.images import prepare_image
    from raiox_core.synthetic import demo_files

    batch = images(6, seed=4) + [prepare_image(data, limits=ImageLimits()).image for _, data in demo_files(1, seed=7)[:10]]
    int8 = embedder.encode(batch)
    with embedder.fp32():
        assert embedder.precision == "fp32"
        fp32 = embedder.encode(batch)
    assert embedder.precision == "int8"
    assert cosines(int8, fp32).min() >= 0.999
    assert not np.allclose(int8, fp32, atol=1e-6)  # it really is another computation


def test_int8_patch_embedding_follows_the_convolution(embedder):
    conv = embedder.model.visual.conv1
    pixels = embedder.to_tensor(images(2, seed=6))
    assert "forward" in conv.__dict__  # the int8 tower's replacement is active ...
    with torch.inference_mode():
        int8 = conv(pixels)
        with embedder.fp32():
            assert "forward" not in conv.__dict__  # ... and fp32() puts the convolution back
            fp32 = conv(pixels)
    assert int8.shape == fp32.shape == (2, 768, 7, 7)
    per_patch = torch.nn.functional.cosine_similarity(int8, fp32, dim=1)
    assert per_patch.min() >= 0.999 and not torch.allclose(int8, fp32, atol=1e-6)


def test_fp32_precision_setting_skips_int8():
    plain = load_embedder("ViT-B-32", "none", "cpu", precision="fp32")
    assert plain.precision == "fp32" and plain.int8 is None and plain.int8_min_cosine is None
    with pytest.raises(ModelLoadError, match="precision"):
        load_embedder("ViT-B-32", "none", "cpu", precision="int4")


def test_weights_that_int8_cannot_follow_stay_fp32(tmp_path, caplog):
    # A few huge LayerNorm gains give every token outlier channels: per-token int8 loses the rest.
    outliers = load_embedder("ViT-B-32", "none", "cpu", precision="fp32")
    with torch.no_grad():
        for block in outliers.model.visual.transformer.resblocks:
            block.ln_1.weight[:4] *= 300
    path = tmp_path / "outliers.pt"
    torch.save(outliers.model.state_dict(), path)
    loaded = load_embedder("ViT-B-32", str(path), "cpu")
    assert loaded.precision == "fp32" and loaded.int8_min_cosine < 0.999
    assert "encoding in fp32" in caplog.text
    im = images(2, seed=5)
    assert np.allclose(loaded.encode(im), outliers.encode(im), atol=1e-5)


def test_a_model_without_a_transformer_tower_loads_and_encodes_in_fp32():
    """RN50's image tower is a ResNet: the int8 forwards (written for a ViT) are not tried on it."""
    resnet = load_embedder("RN50", "none", "cpu")
    assert resnet.precision == "fp32" and resnet.int8_min_cosine is None
    from raiox_core.synthetic import demo_files
    from raiox_core.images import prepare_image

    vector = resnet.encode_one(prepare_image(demo_files(per_diameter=1)[0][1], limits=ImageLimits()).image)
    assert vector.shape == (resnet.dim,) and abs(float(vector @ vector) - 1) < 1e-5


@pytest.mark.parametrize("model", ["ViT-B-32", "RN50"])
def test_an_untrained_model_built_with_a_tiny_text_tower_has_the_same_image_tower(model):
    """The untrained image tower is what open_clip's full model, seeded the same, would hold: same vectors."""
    import open_clip

    from raiox_core.embedder import UNTRAINED_SEED

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        full = open_clip.create_model(model, pretrained=None, device="cpu")
    loaded = load_embedder(model, "none", "cpu", precision="fp32")
    expected, got = full.visual.state_dict(), loaded.model.visual.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert loaded.model.transformer is None  # the (tiny) text tower was dropped as the full one is
