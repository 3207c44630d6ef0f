"""(b) Match latency end to end: bytes -> normalise -> embed -> search -> vote -> log, warm, per reference count."""

from __future__ import annotations

import time

from raiox_core.images import ImageLimits
from raiox_core.match import STAGES, match_bytes

from .env import BenchEnv
from .references import ReferenceSets
from .timing import summarize

WARMUP = 5


def run(env: BenchEnv, sets: ReferenceSets, query_files: list[bytes], n_queries: int) -> list:
    """p50/p95 of match_bytes over n_queries (query images cycled) at the small and the large reference count,
    and the p50 of each stage as the same matches timed it: nothing a match does is left out of the stages."""
    threshold = env.settings.match_threshold
    out = []
    for key in ("small", "large"):
        embedder = env.model_view(sets.embedding_models[key])
        queries = [query_files[i % len(query_files)] for i in range(n_queries)]
        for data in queries[:WARMUP]:
            match_bytes(data, db=env.db, embedder=embedder, threshold=threshold, limits=ImageLimits())
        seconds, stages = [], {stage: [] for stage in STAGES}
        for data in queries:
            start = time.perf_counter()
            result = match_bytes(data, db=env.db, embedder=embedder, threshold=threshold, limits=ImageLimits())
            seconds.append(time.perf_counter() - start)
            if len(result.matches) != 3:
                raise RuntimeError(f"match returned {len(result.matches)} neighbours, not 3")
            for stage, values in stages.items():
                values.append(result.timings[stage])
        out.append({"references": sets.size(key), "queries": n_queries, "distinct_images": len(query_files),
                    "encoder": embedder.precision,
                    **summarize(seconds),
                    "stages_p50_ms": {stage: summarize(values)["p50_ms"] for stage, values in stages.items()}})
    return out
