"""`raiox bench --quick` end to end: every figure is produced, finite and positive.

Speed targets are judged by the full bench (bench/README.md), never by timed assertions here: this
test only keeps the bench from rotting.
"""

import json
import math

import pytest

from bench import report as reporting
from bench.run import run_bench
from raiox_core.config import Settings

REQUIRED = [
    ("ingest", "images_per_s"), ("ingest", "speedup_vs_old"), ("ingest", "old_one_at_a_time", "images_per_s"),
    ("ingest", "batched_no_overlap", "images_per_s"), ("ingest", "paired_rounds", 0, "speedup"),
    ("ingest", "paired_rounds", 0, "old", "images_per_s"), ("ingest", "paired_rounds", 0, "pipeline", "images_per_s"),
    ("references", "hnsw_ef_construction"),
    ("match", 0, "p50_ms"), ("match", 0, "p95_ms"), ("match", 1, "p50_ms"), ("match", 1, "p95_ms"),
    ("match", 1, "stages_p50_ms", "embed"), ("match", 1, "stages_p50_ms", "search"),
    ("search", "clustered", "exact", "p50_ms"), ("search", "uniform", "exact", "p95_ms"),
    ("search", "filtered", "one_manufacturer_of_8", "p50_ms"), ("search", "filtered", "diameter_4.8", "p95_ms"),
    ("encoder", "matmul", "median_gflops"), ("encoder", "gflop_per_image"), ("encoder", "gflops"),
    ("encoder", "efficiency_vs_matmul"), ("encoder", "single_image_ms"), ("encoder", "int8", "cosine_to_fp32_min"),
    ("encoder", "int8_dynamic", "cosine_to_fp32_min"), ("encoder", "fp32_efficiency_vs_matmul"),
    ("ingest", "one_at_a_time_current_encoder", "images_per_s"),
    ("explorer", "cold_s"), ("explorer", "warm_s"), ("explorer", "warm_render_s"), ("explorer", "after_warmup_s"),
    ("explorer", "after_warmup", "warmup_s"),
    ("explorer", "scale", "500", "first_view_s"), ("explorer", "scale", "500", "umap_cold_s"),
    ("memory", "peak_mb"), ("memory", "text_tower_mb"),
    ("references", "large", "hnsw_build_s"), ("references", "uniform", "hnsw_build_s"),
    ("cli", "cold", "median_s"), ("cli", "first_after_demo", "median_s"), ("cli", "warm", "median_s"),
    ("cli", "no_model", "median_s"),
    ("api", "one_at_a_time", "16", "matches_per_s"), ("api", "batching", "16", "matches_per_s"),
    ("api", "batching", "16", "p95_ms"), ("api", "batching", "16", "mean_batch"), ("api", "speedup_16_clients"),
    ("api", "speedup_vs_one_client_serial"),
    ("train", "200", "total_s"), ("train", "200", "final_fit_s"),
    ("explain", "map_vs_match"), ("explain", "map", "p50_ms"), ("explain", "match", "p50_ms"),
    ("explain", "occlusion_s"), ("explain", "occlusion_fp32_s"),
    ("search", "cone", "default", "recall_at_10"), ("search", "radiographs", "default", "recall_at_10"),
    ("search", "cone", "nn_cosine"), ("search", "radiographs", "exact", "p50_ms"),
    ("bulk", "vectors", "bulk_vectors_per_s"), ("bulk", "vectors", "live_vectors_per_s"),
    ("bulk", "vectors", "bulk_index_build_s"), ("bulk", "restore", "references_per_s"),
]


def _at(node, path):
    for key in path:
        node = node[key]
    return node


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_bench_produces_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    settings = Settings(data_dir=tmp_path / "data", pretrained="none", device="cpu")
    assert run_bench(settings, quick=True, json_path=str(out)) == 0
    report = json.loads(out.read_text())

    assert report["errors"] == {}
    for key in ("cpu", "cores", "ram_gb", "gpu"):
        assert report["machine"][key]
    for key in ("python", "torch", "open_clip_torch", "postgres", "pgvector_extension"):
        assert report["versions"][key] and report["versions"][key] != "not installed"
    missing = [path for path in REQUIRED if not _positive(_at(report["figures"], path))]
    assert missing == []
    runs = [report["figures"]["ingest"]["old_one_at_a_time"], *report["figures"]["ingest"]["pipeline"].values()]
    assert all(isinstance(r["page_faults_per_image"], int) and r["page_faults_per_image"] >= 0 for r in runs)
    for part in ("clustered", "uniform", "cone", "radiographs"):
        for ef in ("20", "40", "100"):
            row = report["figures"]["search"][part]["hnsw"][ef]
            assert 0 < row["recall_at_10"] <= 1 and _positive(row["p50_ms"]) and _positive(row["p95_ms"])
    assert all(t["met"] is None for t in report["targets"])  # quick: not judged
    assert all(t["value"] is not None for t in report["targets"] if t["id"] not in ("m1", "m2"))  # m: at 1M only
    assert "## Targets" in reporting.markdown(report)
    assert "### (l) Bulk writes" in reporting.markdown(report)


@pytest.mark.slow
def test_the_scale_run_measures_references_search_match_and_memory(tmp_path, monkeypatch):
    """`raiox bench --scale 1m`'s path at 3,000 references: the figures it reports, and its own result files."""
    from bench import run as bench_run

    monkeypatch.setattr(bench_run, "SCALES", {"1m": 3_000})
    monkeypatch.setattr(bench_run, "SCALE_QUERIES", 8)
    monkeypatch.setattr(bench_run, "RESULTS_DIR", tmp_path / "results")
    out = tmp_path / "scale.json"
    settings = Settings(data_dir=tmp_path / "data", pretrained="none", device="cpu")
    assert run_bench(settings, json_path=str(out), scale="1m") == 0
    report = json.loads(out.read_text())
    assert report["errors"] == {} and set(report["figures"]) == {"references", "search", "match", "memory"}
    figures = report["figures"]
    assert figures["references"]["large"]["vectors"] == 3_000 and set(figures["search"]) >= {"clustered", "cone"}
    assert "uniform" not in figures["search"] and figures["match"][-1]["references"] == 3_000
    assert 0 < figures["search"]["cone"]["default"]["recall_at_10"] <= 1
    assert _positive(figures["memory"]["peak_serving_mb"]) and _positive(figures["memory"]["postgres_pss_mb"])
    assert "explorer_matrix" not in figures["memory"]["marks"]
    assert [p.name for p in sorted((tmp_path / "results").iterdir())] == [
        f"{report['machine']['slug']}-1m.json", f"{report['machine']['slug']}-1m.md"]
