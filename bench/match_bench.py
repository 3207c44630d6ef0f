"""(b) Match latency end to end: bytes -> normalise -> embed -> search -> vote -> log, warm, per reference count."""

from __future__ import annotations

import time

from raiox_core.images import ImageLimits, prepare_image
from raiox_core.match import VOTE_POOL, match_bytes, vote
from raiox_core.references import Neighbour

from .env import BenchEnv
from .references import ReferenceSets
from .timing import summarize

WARMUP = 5


def _stages(env: BenchEnv, embedder, queries: list[bytes], threshold: float) -> dict:
    """Where the time goes: the same steps as match_bytes, timed one by one."""
    times: dict[str, list[float]] = {"prepare": [], "embed": [], "search": [], "vote_and_log": []}
    for data in queries:
        t0 = time.perf_counter()
        image = prepare_image(data, limits=ImageLimits())
        t1 = time.perf_counter()
        vector = embedder.encode_one(image.image)
        t2 = time.perf_counter()
        rows = env.db.search(vector, embedder.embedding_model, k=VOTE_POOL)
        t3 = time.perf_counter()
        neighbours = [Neighbour.from_row(r) for r in rows]
        makers, _ = vote(neighbours)
        env.db.log_match(query_sha256=image.sha256, embedding_model=embedder.embedding_model, k=3, filters={}, results=[],
                         confidence=makers[0].probability, confident=makers[0].probability >= threshold)
        t4 = time.perf_counter()
        for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[name].append(seconds)
    stages = {name: summarize(values)["p50_ms"] for name, values in times.items()}
    return stages


def run(env: BenchEnv, sets: ReferenceSets, query_files: list[bytes], n_queries: int, n_stage_queries: int) -> list:
    """p50/p95 of match_bytes over n_queries (query images cycled) at the small and the large reference count."""
    threshold = env.settings.match_threshold
    out = []
    for key in ("small", "large"):
        embedder = env.model_view(sets.embedding_models[key])
        queries = [query_files[i % len(query_files)] for i in range(n_queries)]
        for data in queries[:WARMUP]:
            match_bytes(data, db=env.db, embedder=embedder, threshold=threshold, limits=ImageLimits())
        seconds = []
        for data in queries:
            start = time.perf_counter()
            result = match_bytes(data, db=env.db, embedder=embedder, threshold=threshold, limits=ImageLimits())
            seconds.append(time.perf_counter() - start)
            if len(result.matches) != 3:
                raise RuntimeError(f"match returned {len(result.matches)} neighbours, not 3")
        out.append({"references": sets.size(key), "queries": n_queries, "distinct_images": len(query_files),
                    "encoder": embedder.precision,
                    **summarize(seconds), "stages_p50_ms": _stages(env, embedder, queries[:n_stage_queries],
                                                                   threshold)})
    return out
