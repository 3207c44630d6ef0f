"""`raiox match` as a clinician runs it: the answer under a manufacturer filter and for an exact copy."""

import json

import pytest

from raiox_core.synthetic import demo_files
from tests.cli.test_cli import run, write  # noqa: F401  (run is a fixture)

pytestmark = pytest.mark.slow


def test_match_under_a_filter_and_an_exact_copy(run, tmp_path):  # noqa: F811
    files = demo_files(per_diameter=1)[:6]
    paths = write(tmp_path, files)
    assert run("ingest", *paths[1:]).returncode == 0
    # paths[0] is not a reference; paths[1] is one, byte for byte.
    proc = run("match", paths[0], paths[1], "--manufacturer", "nobel", "--json", RAIOX_MATCH_THRESHOLD="0.99")
    assert proc.returncode == 0, proc.stderr
    filtered, exact = json.loads(proc.stdout)
    assert filtered["restricted_to"] == "Nobel Biocare" and filtered["confidence_of"] == "model"
    assert filtered["vote"]["manufacturer"][0]["probability"] == 1.0
    assert filtered["confidence"] == filtered["vote"]["model"][0]["probability"]
    assert filtered["confident"] == (filtered["confidence"] >= 0.99)
    assert exact["exact_reference"]["source_filename"] == files[1][0]
    assert exact["answer"].startswith(f"this exact image is reference #{exact['exact_reference']['id']}")

    human = run("match", paths[0], paths[1], "--manufacturer", "Nobel Biocare").stdout.splitlines()
    assert "(search restricted to Nobel Biocare)" in human[0] and "among Nobel Biocare's models" in human[0]
    assert f"This exact image is reference #{exact['exact_reference']['id']}" in next(
        line for line in human if line.startswith(paths[1]))


# main() in-process, so that the modules it imported can be listed afterwards (on stderr: stdout is the JSON).
LIST_HEAVY_IMPORTS = """
import sys
from raiox_core import cli
code = cli.main(sys.argv[1:])
print("imported:", *sorted(m for m in ("open_clip", "torchvision", "torch._dynamo", "timm") if m in sys.modules),
      file=sys.stderr)
sys.exit(code)
"""


def test_a_later_one_off_match_answers_the_same_from_the_stored_tower_without_open_clip(run, tmp_path):  # noqa: F811
    files = demo_files(per_diameter=1)[:6]
    paths = write(tmp_path, files)
    cache = {"RAIOX_CACHE_DIR": str(tmp_path / "cache")}  # not the run's shared cache: this one starts empty
    assert run("ingest", *paths[1:], **cache).returncode == 0
    assert not (tmp_path / "cache" / "encoders").exists()  # ingestion loads the full model and stores no tower
    first = run("match", paths[0], paths[1], "--k", "5", "--json", **cache)
    assert first.returncode == 0, first.stderr
    (tower,) = (tmp_path / "cache" / "encoders").glob("*.pt")
    later = run("-c", LIST_HEAVY_IMPORTS, "match", paths[0], paths[1], "--k", "5", "--json", program=(), **cache)
    assert later.returncode == 0 and later.stderr.splitlines()[-1] == "imported:", later.stderr
    assert list((tmp_path / "cache" / "encoders").glob("*.pt")) == [tower]
    for a, b in zip(json.loads(first.stdout), json.loads(later.stdout), strict=True):
        assert [m["id"] for m in a["matches"]] == [m["id"] for m in b["matches"]]
        assert [m["similarity"] for m in a["matches"]] == pytest.approx([m["similarity"] for m in b["matches"]], abs=2e-4)
        strip = lambda answer: {k: v for k, v in answer.items() if k not in ("matches", "vote", "confidence")}  # noqa: E731
        assert strip(a) == strip(b) and a["confidence"] == pytest.approx(b["confidence"], abs=2e-4)
    assert json.loads(later.stdout)[1]["exact_reference"]["source_filename"] == files[1][0]
