"""(k) Explanations: the similarity map against one match on the same queries, and the occlusion check."""

from __future__ import annotations

import statistics
import time

from raiox_core import explain
from raiox_core.images import ImageLimits, prepare_image
from raiox_core.ingest import Source, ingest
from raiox_core.match import match_bytes
from raiox_core.references import delete_reference

from .env import BenchEnv
from .timing import summarize

WARMUP = 2


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run(env: BenchEnv, files: list[tuple[str, bytes]], queries: list[bytes], quick: bool) -> dict:
    """Alternate `match_bytes` and `prepare_image` + `explain_reference` on the same query bytes, in pairs.

    The VM's speed drifts within minutes, so each pair sees one machine state and the headline is the median
    of the pairs' ratios. A few references are ingested into a storage of this section's own (the bulk sets
    have no images) and deleted afterwards; the match searches whatever the loaded model's partition holds
    (the encoder dominates either way: search is a few ms).
    """
    rounds, occlusion_rounds = (4, 1) if quick else (30, 5)
    embedder, limits, threshold = env.embedder, ImageLimits(), env.settings.match_threshold
    storage = env.storage("explain")
    report = ingest([Source.from_bytes(name, png) for name, png in files[:3]], db=env.db, storage=storage,
                    embedder=embedder, limits=limits)
    ids = [item.id for item in report.ingested]
    if not ids:
        raise RuntimeError("no reference could be ingested for the explain bench")
    try:
        def match(data):
            return match_bytes(data, db=env.db, embedder=embedder, threshold=threshold, limits=limits)

        def explain_map(data, ref_id):
            query = prepare_image(data, limits)  # from the same bytes as the match, for an even comparison
            return explain.explain_reference(query.image, ref_id, db=env.db, storage=storage, embedder=embedder)

        for i in range(WARMUP):
            match(queries[i % len(queries)])
            explain_map(queries[i % len(queries)], ids[0])
        match_s, map_s, ratios = [], [], []
        for i in range(rounds):
            data, ref_id = queries[i % len(queries)], ids[i % len(ids)]
            if i % 2:  # alternate which goes first
                m, _ = _timed(lambda: match(data))
                e, _ = _timed(lambda: explain_map(data, ref_id))
            else:
                e, _ = _timed(lambda: explain_map(data, ref_id))
                m, _ = _timed(lambda: match(data))
            match_s.append(m)
            map_s.append(e)
            ratios.append(e / m)
        query = prepare_image(queries[0], limits)
        explanation, reference_image = explain.explain_reference(query.image, ids[0], db=env.db, storage=storage,
                                                                 embedder=embedder)
        explained = explanation.map
        scale = explain.colour_range(explained.query, explained.reference)
        pairs = ((query.image, explained.query), (reference_image, explained.reference))
        overlay_s = [_timed(lambda: [explain.overlay(im, grid, scale, side=300) for im, grid in pairs])[0]
                     for _ in range(5)]
        explain.occlusion_check(query.image, explained, embedder)  # warm-up
        occlusion = [_timed(lambda: explain.occlusion_check(query.image, explained, embedder))
                     for _ in range(occlusion_rounds)]
        with embedder.fp32():
            fp32_map = explain.similarity_map(query.image, reference_image, embedder)
            occlusion_fp32 = [_timed(lambda: explain.occlusion_check(query.image, fp32_map, embedder))[0]
                              for _ in range(occlusion_rounds)]
    finally:
        for ref_id in ids:
            delete_reference(env.db, storage, ref_id)
    check = occlusion[0][1]
    return {
        "rounds": rounds, "encoder": embedder.precision,
        "match": summarize(match_s), "map": summarize(map_s),
        "map_vs_match": round(statistics.median(ratios), 3),
        "map_vs_match_of_medians": round(statistics.median(map_s) / statistics.median(match_s), 3),
        "pair_ratios_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        "overlays_ms": round(statistics.median(overlay_s) * 1000, 2),
        "occlusion_images": check.images, "deletion_steps": explain.DELETION_STEPS,
        "random_orders": explain.RANDOM_ORDERS,
        "occlusion_s": round(statistics.median(s for s, _ in occlusion), 3),
        "occlusion_fp32_s": round(statistics.median(occlusion_fp32), 3),
        "occlusion_ms_per_image": round(statistics.median(s for s, _ in occlusion) / check.images * 1000, 2),
    }
