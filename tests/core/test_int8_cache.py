"""The int8 check's verdict is kept per weights, CPU and code: a later load reuses it instead of probing again."""

import json

import numpy as np
import pytest
import torch

from raiox_core import embedder as embedder_module
from raiox_core import int8_verdicts
from raiox_core.config import Settings
from raiox_core.embedder import load_embedder, load_from_settings
from raiox_core.int8_verdicts import Verdict


@pytest.fixture
def probes(monkeypatch):
    """Counts the int8 probe checks; `probes.fake = Verdict(...)` answers without encoding (a fast load)."""

    class Counter:
        calls = 0
        fake = None

    real = embedder_module._probe_int8

    def counted(embedder, tower):
        Counter.calls += 1
        return Counter.fake if Counter.fake is not None else real(embedder, tower)

    monkeypatch.setattr(embedder_module, "_probe_int8", counted)
    return Counter


def cache_files(cache_dir):
    return sorted((cache_dir / "int8").glob("*.json"))


def radiographs():
    from raiox_core.images import ImageLimits, prepare_image
    from raiox_core.synthetic import demo_files

    return [prepare_image(data, limits=ImageLimits()).image for _, data in demo_files(1, seed=3)[:4]]


def test_a_second_load_reads_the_verdict_and_encodes_the_same_vectors(tmp_path, probes):
    fresh = load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    assert probes.calls == 1 and fresh.precision == "int8" and len(cache_files(tmp_path)) == 1
    cached = load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    assert probes.calls == 1  # no second check
    assert cached.precision == "int8" and cached.int8_min_cosine == fresh.int8_min_cosine >= 0.999
    images = radiographs()
    assert np.array_equal(cached.encode(images), fresh.encode(images))
    stored = json.loads(cache_files(tmp_path)[0].read_text())
    assert stored["passed"] is True and stored["min_cosine"] == fresh.int8_min_cosine
    assert stored["key"]["weights"] == "ViT-B-32/untrained seed 0" and stored["key"]["torch"] == torch.__version__


def test_another_cpu_checks_again(tmp_path, probes, monkeypatch):
    probes.fake = Verdict(True, 0.9996)
    load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    monkeypatch.setattr(int8_verdicts.cpu, "vector_flags", lambda: ["sse2"])  # the VM moved to another host (a flag list unlike this one's: on an AVX2-only host "avx2, fma" was no move)
    load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    assert probes.calls == 2 and len(cache_files(tmp_path)) == 2
    monkeypatch.setattr(int8_verdicts.cpu, "model_name", lambda: "Another CPU")
    load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    assert probes.calls == 3


def test_other_weights_check_again(tmp_path, probes, embedder):
    probes.fake = Verdict(True, 0.9996)
    load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    checkpoint = tmp_path / "same-values-other-file.pt"  # the same numbers, but weights are known by their file
    torch.save(embedder.model.state_dict(), checkpoint)
    loaded = load_embedder("ViT-B-32", str(checkpoint), "cpu", cache_dir=tmp_path / "cache")
    assert probes.calls == 2 and loaded.precision == "int8"
    keys = [json.loads(p.read_text())["key"]["weights"] for p in cache_files(tmp_path / "cache")]
    assert len(keys) == 1 and keys[0].startswith("ViT-B-32/file sha256:") and len(keys[0]) == len("ViT-B-32/file sha256:") + 64


def test_the_key_names_weights_code_and_threshold():
    base = int8_verdicts.check_key("ViT-B-32/untrained seed 0", 0.999, 1)
    assert base == int8_verdicts.check_key("ViT-B-32/untrained seed 0", 0.999, 1)
    for other in (int8_verdicts.check_key("ViT-B-32/laion2b_s34b_b79k", 0.999, 1),
                  int8_verdicts.check_key("ViT-B-32/untrained seed 0", 0.9999, 1),
                  int8_verdicts.check_key("ViT-B-32/untrained seed 0", 0.999, 2)):
        assert other != base and int8_verdicts._path("/c", other) != int8_verdicts._path("/c", base)
    assert {"cpu", "cpu_flags", "torch_cpu_capability", "torch", "open_clip", "code"} <= set(base)


def test_a_failed_verdict_is_cached_too_and_still_reported(tmp_path, probes, caplog):
    probes.fake = Verdict(False, 0.98)
    first = load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    again = load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    assert probes.calls == 1
    for loaded in (first, again):
        assert loaded.precision == "fp32" and loaded.int8 is None and loaded.int8_min_cosine == 0.98
    assert caplog.text.count("encoding in fp32") == 2  # said at every load, as without the cache


@pytest.mark.parametrize("body", ["", "{not json", '{"key": {}, "passed": true, "min_cosine": 0.9995}',
                                  '{"passed": "yes", "min_cosine": 0.9995}', "[1, 2]"])
def test_a_corrupt_cache_file_is_checked_again_and_rewritten(tmp_path, probes, body):
    probes.fake = Verdict(True, 0.9996)
    load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    stored = json.loads(path.read_text())
    if body.startswith('{"passed"'):  # the right key, a wrong value
        body = json.dumps({**json.loads(body), "key": stored["key"]})
    path.write_text(body)
    again = load_embedder("ViT-B-32", "none", "cpu", cache_dir=tmp_path)
    assert probes.calls == 2 and again.precision == "int8"
    assert json.loads(path.read_text()) == stored
    assert [p.name for p in (tmp_path / "int8").iterdir()] == [path.name]  # no temporary file left behind


def test_an_unwritable_cache_only_costs_the_check(tmp_path, probes):
    probes.fake = Verdict(True, 0.9996)
    blocked = tmp_path / "a-file"
    blocked.write_text("the cache dir's place is taken by a file")
    for _ in range(2):
        assert load_embedder("ViT-B-32", "none", "cpu", cache_dir=blocked).precision == "int8"
    assert probes.calls == 2


def test_without_a_cache_dir_every_load_checks(probes):
    probes.fake = Verdict(True, 0.9996)
    load_embedder("ViT-B-32", "none", "cpu")
    load_embedder("ViT-B-32", "none", "cpu")
    assert probes.calls == 2


def test_settings_put_the_cache_in_the_data_dir_unless_told(tmp_path, probes):
    assert Settings(data_dir=tmp_path).effective_cache_dir == tmp_path / "cache"
    told = Settings.from_env({"RAIOX_DATA_DIR": str(tmp_path), "RAIOX_CACHE_DIR": str(tmp_path / "elsewhere")})
    assert told.effective_cache_dir == tmp_path / "elsewhere"
    probes.fake = Verdict(True, 0.9996)
    load_from_settings(told.with_(pretrained="none", device="cpu"))
    assert len(cache_files(tmp_path / "elsewhere")) == 1 and not (tmp_path / "cache").exists()
