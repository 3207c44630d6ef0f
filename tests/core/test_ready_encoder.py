"""The ready-made image tower (ready_encoder): a later encode-only load skips open_clip, and its vectors are the
full model's; a corrupt file is ignored and replaced, and other weights, CPUs or code get a file of their own."""

import numpy as np
import pytest
import torch

from raiox_core import int8_verdicts
from raiox_core.embedder import load_embedder
from raiox_core.int8_verdicts import Verdict
from raiox_core.quantise import min_cosine
from raiox_core.ready_encoder import TracedTower
from tests.core.test_int8_cache import probes, radiographs  # noqa: F401  (probes is a fixture)

SAME = 0.99999  # the traced tower runs the same operations: its vectors agree to float rounding


@pytest.fixture
def builds(monkeypatch):
    """Counts open_clip model constructions: a load from the stored tower makes none."""
    import open_clip

    class Counter:
        calls = 0

    real = open_clip.create_model

    def counted(*args, **kwargs):
        Counter.calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", counted)
    return Counter


def stored(cache_dir):
    return sorted((cache_dir / "encoders").glob("*.pt"))


def ready(cache_dir, pretrained="none", precision="auto"):
    return load_embedder("ViT-B-32", pretrained, "cpu", precision, cache_dir=cache_dir, ready_made=True)


def assert_same_vectors(a, b, images):
    assert min_cosine(a.encode(images), b.encode(images)) >= SAME
    one = np.stack([a.encode_one(im) for im in images])  # batches of another size than the traced one
    assert min_cosine(one, b.encode(images)) >= SAME


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_a_second_load_uses_the_stored_tower_and_encodes_the_same_vectors(tmp_path, probes, builds, precision):
    full = ready(tmp_path, precision=precision)
    assert builds.calls == 1 and len(stored(tmp_path)) == 1 and not isinstance(full.model, TracedTower)
    again = ready(tmp_path, precision=precision)
    assert builds.calls == 1 and isinstance(again.model, TracedTower)  # no model built the second time
    assert (again.embedding_model, again.dim, again.image_size, again.trained, again.device) == \
        (full.embedding_model, full.dim, full.image_size, full.trained, full.device)
    assert again.precision == full.precision == ("int8" if precision == "auto" else "fp32")
    assert again.int8_min_cosine == full.int8_min_cosine and np.array_equal(again.mean, full.mean)
    assert_same_vectors(again, full, radiographs())
    if precision == "auto":
        with pytest.raises(RuntimeError, match="no fp32 path"):
            again.fp32()


def test_without_ready_made_the_full_model_is_loaded_and_nothing_stored(tmp_path, probes, builds):
    probes.fake = Verdict(True, 0.9996)
    ready(tmp_path)
    plain = load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)  # the dashboard's and the API's load
    assert builds.calls == 2 and not isinstance(plain.model, TracedTower) and len(stored(tmp_path)) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_file_is_ignored_and_replaced(tmp_path, probes, builds, damage):
    probes.fake = Verdict(True, 0.9996)
    full = ready(tmp_path)
    (path,) = stored(tmp_path)
    body = path.read_bytes()
    path.write_bytes({"garbage": b"not a TorchScript archive", "truncated": body[: len(body) // 2], "empty": b""}[damage])
    rebuilt = ready(tmp_path)
    assert builds.calls == 2 and not isinstance(rebuilt.model, TracedTower)  # the full load again
    assert stored(tmp_path) == [path] and path.read_bytes() != b"" and len(path.read_bytes()) > len(body) // 2
    assert not [p for p in (tmp_path / "encoders").iterdir() if p.suffix != ".pt"]  # no temporary file left
    again = ready(tmp_path)
    assert builds.calls == 2 and isinstance(again.model, TracedTower)
    assert_same_vectors(again, full, radiographs()[:2])


def test_another_checkpoint_gets_its_own_tower(tmp_path, probes, builds, embedder):
    probes.fake = Verdict(True, 0.9996)
    base = ready(tmp_path / "cache")
    state = embedder.model.state_dict()
    other = {k: (v + 0.01 * torch.randn_like(v) if k.startswith("visual.transformer") else v) for k, v in state.items()}
    checkpoint = tmp_path / "other.pt"
    torch.save(other, checkpoint)
    first = ready(tmp_path / "cache", str(checkpoint))
    assert builds.calls == 2 and len(stored(tmp_path / "cache")) == 2  # a file per set of weights
    again = ready(tmp_path / "cache", str(checkpoint))
    assert builds.calls == 2 and isinstance(again.model, TracedTower)
    assert again.embedding_model == first.embedding_model != base.embedding_model
    images = radiographs()[:2]
    assert_same_vectors(again, first, images)
    assert min_cosine(again.encode(images), base.encode(images)) < SAME  # the checkpoint's vectors, not the base's
    torch.save(state, checkpoint)  # new content under the same name: another digest, so another tower
    changed = ready(tmp_path / "cache", str(checkpoint))
    assert builds.calls == 3 and not isinstance(changed.model, TracedTower)


def test_another_cpu_builds_again_and_replaces_the_older_file(tmp_path, probes, builds, monkeypatch):
    probes.fake = Verdict(True, 0.9996)
    ready(tmp_path)
    (before,) = stored(tmp_path)
    monkeypatch.setattr(int8_verdicts.cpu, "vector_flags", lambda: ["sse2"])  # the VM moved to another host (a flag list unlike this one's: on an AVX2-only host "avx2, fma" was no move)
    assert not isinstance(ready(tmp_path).model, TracedTower) and builds.calls == 2
    (after,) = stored(tmp_path)  # the same weights' older file is gone
    assert after != before
    assert isinstance(ready(tmp_path).model, TracedTower) and builds.calls == 2


def test_an_unwritable_cache_only_costs_the_full_load(tmp_path, probes, builds):
    probes.fake = Verdict(True, 0.9996)
    blocked = tmp_path / "a-file"
    blocked.write_text("the cache dir's place is taken by a file")
    for _ in range(2):
        assert ready(blocked).precision == "int8"
    assert builds.calls == 2
