"""(a) Ingestion throughput: the real pipeline against a one-image-at-a-time baseline, same images, same run."""

from __future__ import annotations

import inspect
import resource
import statistics
import time
from contextlib import nullcontext

from raiox_core.images import ImageLimits, prepare_image
from raiox_core.ingest import Source, ingest
from raiox_core.naming import resolve_labels
from raiox_core.references import NewReference, add

from .env import BenchEnv


def _old_way(files, env: BenchEnv, storage, fp32: bool = True) -> int:
    """The baseline of target a2 ("old" in the report): decode, one model call, one INSERT and one commit
    per image, in turn.

    fp32 by default, the baseline's encoder; fp32=False keeps the current encoder, which separates what
    batching and overlap bring from what the int8 encoder brings.
    """
    embedder = env.embedder
    with embedder.fp32() if fp32 else nullcontext():
        return _one_at_a_time(files, env, storage)


def _one_at_a_time(files, env: BenchEnv, storage) -> int:
    stored = 0
    embedder = env.embedder
    for name, data in files:
        image = prepare_image(data, ImageLimits())
        vector = embedder.encode_one(image.image)
        new = NewReference.of_image(image, resolve_labels(name), source_filename=name, source="synthetic",
                                    vectors={embedder.embedding_model: vector})
        add(env.db, storage, new)
        stored += 1
    return stored


def _pipeline(files, env: BenchEnv, storage, batch_size: int, per_call: int | None = None) -> int:
    """raiox_core.ingest.ingest; per_call splits the run into calls of that many files (no overlap across)."""
    sources = [Source.from_bytes(name, data) for name, data in files]
    step = per_call or len(sources)
    ingested = 0
    for start in range(0, len(sources), step):
        report = ingest(sources[start : start + step], db=env.db, storage=storage, embedder=env.embedder,
                        source="synthetic", batch_size=batch_size, limits=ImageLimits())
        if report.rejected:
            raise RuntimeError(f"bench ingestion rejected files: {report.rejected[0].reason}")
        ingested += len(report.ingested)
    return ingested


def _run(label: str, fn, files, env: BenchEnv, **kwargs) -> dict:
    env.reset()
    storage = env.storage(label)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # pages the kernel had to map in (all threads)
    start = time.perf_counter()
    count = fn(files, env, storage, **kwargs)
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    if count != len(files):
        raise RuntimeError(f"{label}: stored {count} of {len(files)} images")
    return {"images": count, "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 2),
            "page_faults_per_image": round(faults / count)}


def _paired_rounds(files, env: BenchEnv, batch_size: int, rounds: int) -> list[dict]:
    """The one-at-a-time baseline and the pipeline back to back, `rounds` times.

    This VM's speed drifts by 10-15% within minutes (bench/README.md), so a speed-up taken from two runs
    minutes apart measures the drift as much as the code; each pair here ran on the same machine state.
    """
    out = []
    for _ in range(rounds):
        old = _run("old", _old_way, files, env)
        new = _run(f"pipeline-{batch_size}", _pipeline, files, env, batch_size=batch_size)
        out.append({"old": old, "pipeline": new, "speedup": round(new["images_per_s"] / old["images_per_s"], 3)})
    return out


def _median_run(runs: list[dict]) -> dict:
    """The run with the median images/s (the upper middle one for an even count)."""
    return sorted(runs, key=lambda r: r["images_per_s"])[len(runs) // 2]


def run(env: BenchEnv, files: list[tuple[str, bytes]], batch_sizes: tuple[int, ...], rounds: int = 1) -> dict:
    """Images/s of the one-at-a-time baseline, of batching without overlap, and of the pipeline at each batch size.

    The headline figures are what users get, ingest() at its default batch size, and its speed-up over
    the baseline: medians over `rounds` back-to-back pairs.
    """
    out: dict = {"images": len(files), "storage": "local", "database": "embedded PostgreSQL (pgserver)",
                 "encoder": env.embedder.precision}
    _pipeline(files[:4], env, env.storage("warmup"), batch_size=4)  # first-call costs (index, pool) excluded
    default = inspect.signature(ingest).parameters["batch_size"].default
    out["default_batch_size"] = default
    out["paired_rounds"] = _paired_rounds(files, env, default, rounds)
    out["old_one_at_a_time"] = {**_median_run([r["old"] for r in out["paired_rounds"]]), "encoder": "fp32"}
    if env.embedder.precision != "fp32":
        out["one_at_a_time_current_encoder"] = _run("old-current", _old_way, files, env, fp32=False)
        out["one_at_a_time_current_encoder"]["encoder"] = env.embedder.precision
    best = max(batch_sizes)
    out["batched_no_overlap"] = _run("batched", _pipeline, files, env, batch_size=best, per_call=best)
    out["batched_no_overlap"]["batch"] = best
    out["pipeline"] = {str(bs): _run(f"pipeline-{bs}", _pipeline, files, env, batch_size=bs)
                       for bs in batch_sizes if bs != default}
    out["pipeline"][str(default)] = _median_run([r["pipeline"] for r in out["paired_rounds"]])
    out["pipeline"] = dict(sorted(out["pipeline"].items(), key=lambda kv: int(kv[0])))
    out["best_batch_size"] = int(max(out["pipeline"], key=lambda k: out["pipeline"][k]["images_per_s"]))
    out["images_per_s"] = out["pipeline"][str(default)]["images_per_s"]
    out["speedup_vs_old"] = round(statistics.median(r["speedup"] for r in out["paired_rounds"]), 2)
    env.reset()
    return out
