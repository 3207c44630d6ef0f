"""`raiox bench`: measure ingestion, matching, search, encoder, explorer and memory on this machine.

Sections run in an order that loads the big reference set once: encoder, ingestion, then the bulk
load (which also times the HNSW builds), match, search, explorer and memory on that data; then the
HTTP API, on a set of its own. A section
that fails is reported and the others still run; the exit code is 1 then, else 0 (targets that are
not met are reported, not turned into a failure: the bench measures, it does not judge the build).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from raiox_core.config import Settings
from raiox_core.images import ImageLimits

from . import data, report as reporting
from .machine import database_facts, describe_machine, library_versions
from .timing import loadavg

RESULTS_DIR = Path(__file__).resolve().parent / "results"
log = logging.getLogger(__name__)


def result_files(machine_slug: str, scale: str | None = None) -> tuple[Path, Path]:
    """The machine's report files: a full run replaces that machine's previous one, so bench/results/ holds
    the latest run per machine and scale (the run's date is inside the report; older runs are in git history)."""
    stem = f"{machine_slug}-{scale}" if scale else machine_slug
    return RESULTS_DIR / f"{stem}.json", RESULTS_DIR / f"{stem}.md"


@dataclass(frozen=True)
class BenchSizes:
    ingest_images: int
    ingest_batch_sizes: tuple[int, ...]
    ingest_rounds: int  # back-to-back pairs of the one-at-a-time baseline and the pipeline
    n_small: int
    n_large: int
    match_queries: int
    search_queries: int
    encoder_images: int
    encoder_batch_sizes: tuple[int, ...]
    encoder_min_seconds: float
    memory_matches: int
    query_images: int
    cold_numba: bool
    cli_runs: int  # `raiox match` on one image from the shell, per int8 cache state
    api_requests: int  # per way of serving, client count and round
    api_rounds: int
    train_references: tuple[int, ...] = ()  # `raiox train` (adapter cross-validation) at these sizes
    radiograph_images: int = 2_000  # rendered and encoded for the "radiographs" search distribution
    restore_references: int = 100_000  # `raiox restore` of an archive this big (bulk section)
    explorer_scales: tuple[str, ...] = ("small", "large")  # reference sets whose page flow (e) times: 10k, 100k


FULL = BenchSizes(ingest_images=500, ingest_batch_sizes=(8, 16, 32), ingest_rounds=5, n_small=10_000, n_large=100_000,
                  match_queries=200, search_queries=200, encoder_images=32,
                  encoder_batch_sizes=(1, 8, 16, 32), encoder_min_seconds=4.0, memory_matches=20, query_images=50,
                  cold_numba=True, cli_runs=5, api_requests=160, api_rounds=3,
                  train_references=(1_000, 10_000))
QUICK = BenchSizes(ingest_images=40, ingest_batch_sizes=(16,), ingest_rounds=1, n_small=500, n_large=2_000, match_queries=30,
                   search_queries=30, encoder_images=16, encoder_batch_sizes=(1, 16),
                   encoder_min_seconds=0.5, memory_matches=3, query_images=8, cold_numba=False,
                   cli_runs=1, api_requests=32, api_rounds=1, train_references=(200,),
                   radiograph_images=48, restore_references=2_000, explorer_scales=("small",))


# `raiox bench --scale 1m`: only what changes with the reference count (not in the test suite; the loads, the
# index builds and the exact ground truth at 1M take most of an hour on 2 cores).
SCALES = {"1m": 1_000_000}
SCALE_KINDS = ("cone",)  # beside the clustered partition: the hard distribution
SCALE_QUERIES = 100


def _section(report: dict, name: str, fn, *args, **kwargs):
    """Run one section; its figures go under report['figures'][name], a failure under report['errors']."""
    print(f"raiox bench: {name}…", flush=True)
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # one broken section must not cost the figures of the others
        log.debug("section %s failed", name, exc_info=True)
        report["errors"][name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        return None
    report["figures"][name] = result
    report["section_seconds"][name] = round(time.perf_counter() - start, 1)
    report["section_load"][name] = loadavg()  # 1-min load at the end: was something else running?
    return result


def run_bench(settings: Settings, quick: bool = False, json_path: str | None = None, scale: str | None = None) -> int:
    """Run every section at full (or quick) sizes, or the reference-count sections at a `scale` of SCALES;
    write JSON + markdown; return the exit code."""
    from . import (api_bench, bulk_bench, cli_bench, encoder_bench, explain_bench, explorer_bench, ingest_bench, match_bench,
                   memory_bench, references, search_bench, train_bench)
    from .env import BenchEnv

    import torch

    sizes = QUICK if quick else FULL
    if scale:
        sizes = replace(FULL, n_large=SCALES[scale], match_queries=SCALE_QUERIES, search_queries=SCALE_QUERIES,
                        memory_matches=10, query_images=20)
    started = datetime.now(timezone.utc)
    report: dict = {
        "schema": 1, "quick": quick, "scale": scale, "started": started.isoformat(timespec="seconds"),
        "machine": describe_machine(), "versions": library_versions(), "sizes": asdict(sizes),
        "load": {"before": loadavg()}, "figures": {}, "section_seconds": {}, "section_load": {}, "errors": {}, "notes": [],
    }
    wall = time.perf_counter()
    print("raiox bench: rendering synthetic radiographs…", flush=True)
    files = data.radiographs(sizes.ingest_images, seed=0)
    queries = [png for _, png in data.radiographs(sizes.query_images, seed=1)]
    env = BenchEnv.start(settings)
    try:
        report["notes"] += env.notes
        with env.db.connection() as conn:
            db_facts = database_facts(conn)
        report["versions"].update(postgres=db_facts.pop("postgres"), pgvector_extension=db_facts.pop("pgvector"))
        from raiox_core import db as dbmod

        report["settings"] = {
            "model": env.settings.model, "embedding_model": env.embedder.embedding_model, "device": env.embedder.device,
            "torch_threads": torch.get_num_threads(), "hnsw_m": dbmod.HNSW_M,
            "hnsw_ef_construction": dbmod.HNSW_EF_CONSTRUCTION, "ef_search_default": dbmod.DEFAULT_EF_SEARCH,
            "exact_search_max_rows": dbmod.EXACT_SEARCH_MAX_ROWS, **{f"pg_{k}": v for k, v in db_facts.items()},
        }
        if scale:
            _scale_sections(report, env, sizes, queries)
            return _finish(report, wall, quick, json_path, scale)
        images = [_decoded(png) for png in queries[: sizes.encoder_images]]
        images += [_decoded(png) for _, png in files[: max(0, sizes.encoder_images - len(images))]]
        _section(report, "encoder", encoder_bench.run, env.embedder, images, sizes.encoder_min_seconds,
                 sizes.encoder_batch_sizes)
        _section(report, "ingest", ingest_bench.run, env, files, sizes.ingest_batch_sizes, sizes.ingest_rounds)
        sets = _section(report, "references", lambda: references.load(env, sizes.n_small, sizes.n_large,
                                                                               sizes.radiograph_images))
        if sets is not None:
            report["figures"]["references"] = sets.figures
            _section(report, "match", match_bench.run, env, sets, queries, sizes.match_queries)
            _section(report, "search", search_bench.run, env.db, sets, sizes.search_queries, env.settings.target_recall)
            _section(report, "explorer", explorer_bench.run, env, sets, sizes.cold_numba, sizes.explorer_scales)
            _section(report, "memory", memory_bench.run, env, queries, sizes.memory_matches)
        _section(report, "explain", explain_bench.run, env, files, queries, quick)
        if sets is not None:  # after every section that searches the reference sets: it ends with a restore
            _section(report, "bulk", bulk_bench.run, env, sets, sizes.restore_references)
        _section(report, "train", train_bench.run, sizes.train_references)
        _section(report, "cli", cli_bench.run, env, queries[0], sizes.cli_runs)
        # Last: it replaces the reference sets with its own (the served model's partition at n_small).
        _section(report, "api", api_bench.run, env, sizes.n_small, queries, sizes.api_requests,
                 sizes.api_rounds)
    finally:
        env.close()
    return _finish(report, wall, quick, json_path)


def _scale_sections(report: dict, env, sizes: BenchSizes, queries: list[bytes]) -> None:
    """References at the scale, their search (the recall probe tunes each index first), then matches on
    the tuned index and the memory of the app (no explorer matrix) and of PostgreSQL."""
    from . import match_bench, memory_bench, references, search_bench

    sets = _section(report, "references", lambda: references.load(env, sizes.n_small, sizes.n_large, kinds=SCALE_KINDS))
    if sets is None:
        return
    report["figures"]["references"] = sets.figures
    _section(report, "search", search_bench.run, env.db, sets, sizes.search_queries, env.settings.target_recall)
    _section(report, "match", match_bench.run, env, sets, queries, sizes.match_queries)
    _section(report, "memory", memory_bench.run, env, queries, sizes.memory_matches, explorer=False)


def _finish(report: dict, wall: float, quick: bool, json_path: str | None, scale: str | None = None) -> int:
    report["load"]["after"] = loadavg()
    report["duration_s"] = round(time.perf_counter() - wall, 1)
    report["targets"] = reporting.judge(report["figures"], full=not quick)
    report["notes"].append(
        "Reference vectors are synthetic (see bench/data.py): 'clustered' = 24 model centroids + variation in a "
        "32-d subspace per model + isotropic noise; 'uniform' = random directions; 'cone' = 2,000 small clusters "
        "in a narrow cone; 'radiographs' = perturbed copies of the loaded model's vectors of rendered radiographs. "
        "Queries for (b) are real radiographs embedded by the loaded model; for (c) fresh draws from the same "
        "distribution.")
    report["notes"].append(_load_note(report["load"]["before"]))
    if quick:
        report["notes"].append("Quick sizes: the figures prove the bench runs; targets are not judged.")
    json_file = Path(json_path) if json_path else None
    md_file = None
    if not quick:
        json_result, md_file = result_files(report["machine"]["slug"], scale)
        reporting.write(report, json_result, md_file)
    reporting.write(report, json_file, None)
    print(reporting.markdown(report))
    if md_file:
        print(f"raiox bench: wrote {md_file} and {md_file.with_suffix('.json')}")
    return 1 if report["errors"] else 0


def _load_note(before: float) -> str:
    """Whether the machine was idle when the bench started (later load averages include the bench's own threads)."""
    if before > 1.0:
        return (f"The machine was busy when the bench started (1-min load {before:.1f} on {describe_machine()['cores']}"
                " cores): other processes competed for the CPU and every figure here is pessimistic.")
    return (f"1-min load {before:.1f} when the bench started. Per-section load averages include the bench's own "
            "threads (torch, reader, writer, PostgreSQL), so 2-4 is expected while it runs.")


def _decoded(png: bytes):
    from raiox_core.images import prepare_image

    return prepare_image(png, limits=ImageLimits()).image
