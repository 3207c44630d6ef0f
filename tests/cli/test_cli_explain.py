"""`raiox explain` as a user runs it: the overlay figure, the figures in words and in --json, and its refusals."""

import io
import json

import pytest
from PIL import Image

from raiox_core.images import ImageLimits
from raiox_core.synthetic import demo_files
from tests.cli.test_cli import run  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow


@pytest.fixture
def stored(db, settings, embedder):
    """One reference, ingested in this process into the database and storage the command will use."""
    from raiox_core.ingest import Source, ingest
    from raiox_core.storage import open_storage

    name, data = demo_files(per_diameter=1)[5]
    report = ingest([Source.from_bytes(name, data)], db=db, storage=open_storage(settings), embedder=embedder,
                    limits=ImageLimits())
    return report.ingested[0].id


@pytest.fixture
def query(tmp_path):
    path = tmp_path / "xray.png"
    path.write_bytes(demo_files(per_diameter=1)[0][1])
    return path


def test_explain_writes_the_overlay_and_the_documented_json(run, tmp_path, stored, query):  # noqa: F811
    out = tmp_path / "explained.png"
    proc = run("explain", str(query), str(stored), "--out", str(out), "--occlusion", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"file", "meaning", "reference", "map", "occlusion", "out"}
    assert data["out"] == str(out) and data["reference"]["id"] == stored
    m = data["map"]
    assert m["grid"] == [7, 7] and m["embedding_model"] == "ViT-B-32/untrained" and m["precision"] in ("int8", "fp32")
    assert -1 <= m["query_mean"] <= m["query_max"] <= 1 and len(m["query"]) == len(m["reference"]) == 7
    d = data["occlusion"]["deletion"]
    assert d["importance"][0] == d["random"][0] == m["pair_cosine"]
    assert set(d) >= {"auc_importance", "auc_random", "faithful", "verdict"} and len(data["occlusion"]["drops"]) == 7
    with Image.open(io.BytesIO(out.read_bytes())) as im:
        assert im.format == "PNG" and im.width > 900  # query, reference and the drop map side by side

    proc = run("explain", str(query), str(stored), "--out", str(out))  # in words, without the occlusion check
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{query} vs reference #{stored} (") and "pair cosine" in lines[0]
    assert "regions that look alike" in lines[1] and "query mean" in lines[1]
    assert not any("deletion" in line for line in lines) and f"wrote {out}" in proc.stdout
    assert "not a causal explanation" in proc.stdout.lower()


def test_explain_refusals_are_one_line(run, tmp_path, stored, query):  # noqa: F811
    out = str(tmp_path / "x.png")
    cases = {
        "unknown id": (str(query), str(stored + 99), out),
        "not an image": (str(tmp_path / "notes.png"), str(stored), out),
        "missing file": (str(tmp_path / "nope.png"), str(stored), out),
        "unwritable out": (str(query), str(stored), str(tmp_path / "no-such-dir" / "x.png")),
        "out is a folder": (str(query), str(stored), str(tmp_path)),
    }
    (tmp_path / "notes.png").write_text("not an image at all")
    errors = {}
    for what, (image, ref_id, where) in cases.items():
        proc = run("explain", image, ref_id, "--out", where)
        assert proc.returncode == 1 and proc.stdout == "", (what, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (what, proc.stderr)
        errors[what] = proc.stderr.strip()
    assert errors["unknown id"].endswith(f"There is no reference with id {stored + 99}.")
    assert "plain-text file" in errors["not an image"]
    assert "could not be read" in errors["missing file"]
    assert "Cannot write the figure" in errors["unwritable out"] and "Cannot write the figure" in errors["out is a folder"]
    assert run("explain", str(query), "seven", "--out", out).returncode == 2  # a usage error
