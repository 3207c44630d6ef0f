"""One section on its own: load the reference sets at one size, then measure search (c), match (b) or the explorer (e).

For a change to the search path (the recall probe, the filtered fallback) or to the explorer that needs
new figures without the hour of a full run. Prints the JSON and writes it to --out; bench/results/ keeps
full runs only.

    RAIOX_PRETRAINED=none python -m bench.rerun --references 1000000 --kinds none --out search-1m.json
    RAIOX_PRETRAINED=none python -m bench.rerun --section explorer --kinds none --out explorer-100k.json
    RAIOX_PRETRAINED=none python -m bench.rerun --section match --references 1000000 --kinds none --out match-1m.json
    RAIOX_PRETRAINED=none python -m bench.rerun --section match --references 1000000 --kinds none --hnsw-m 24 --out m24.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

from raiox_core import db as dbmod
from raiox_core import recall
from raiox_core.config import Settings

from . import data, explorer_bench, match_bench, references, search_bench
from .env import BenchEnv
from .machine import describe_machine

KINDS = ("uniform", "cone", "radiographs")
QUERY_IMAGES = 50  # distinct query radiographs, as a full run's match section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rerun", description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=("search", "match", "explorer"), default="search",
                        help="search (c), match end to end (b) on 10k and --references once the recall probe has"
                             " tuned the larger index, or the explorer's page flow (e) on both (default search)")
    parser.add_argument("--references", type=int, default=100_000, help="vectors per partition (default 100,000)")
    parser.add_argument("--queries", type=int, default=200, help="fresh queries per distribution (default 200)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"distributions beside the clustered one, comma-separated, or none (default {','.join(KINDS)})")
    parser.add_argument("--radiographs", type=int, default=2_000, help="rendered images behind the radiographs kind")
    parser.add_argument("--hnsw-m", type=int, default=dbmod.HNSW_M,
                        help="m of the HNSW indexes built: a candidate measured before db.HNSW_M changes (default %(default)s)")
    parser.add_argument("--out", required=True, help="where to write the JSON")
    args = parser.parse_args(argv)
    _build_with_m(args.hnsw_m)
    kinds = tuple(k for k in args.kinds.split(",") if k and k != "none")
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown kinds {sorted(unknown)}: choose from {', '.join(KINDS)} or none")
    out: dict = {"machine": describe_machine(), "load_before": os.getloadavg()[0], "arguments": vars(args)}
    env = BenchEnv.start(Settings.from_env())
    try:
        start = time.perf_counter()
        sets = references.load(env, min(10_000, args.references), args.references,
                               args.radiographs if "radiographs" in kinds else 0, kinds=kinds)
        out.update(references=sets.figures, load_s=round(time.perf_counter() - start, 1))
        start = time.perf_counter()
        if args.section == "search":
            out["search"] = search_bench.run(env.db, sets, args.queries, env.settings.target_recall)
        elif args.section == "match":
            out["match"] = _match(env, sets, args.queries)
        else:  # as a full run measures it: numba's cache empty at each first map
            out["explorer"] = explorer_bench.run(env, sets, cold_numba=True)
        out.update({f"{args.section}_s": round(time.perf_counter() - start, 1), "load_after": os.getloadavg()[0]})
    finally:
        env.close()
    text = json.dumps(out, indent=1)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


def _build_with_m(m: int) -> None:
    """This process builds its indexes with m (every reader takes db.HNSW_M / HNSW_PARAMS when it runs)."""
    dbmod.HNSW_M = m
    dbmod.HNSW_PARAMS = {**dbmod.HNSW_PARAMS, "m": m}


def _match(env: BenchEnv, sets, n_queries: int) -> dict:
    """Matches as a scale run's match section takes them: after its search section's recall probe has tuned
    the larger index (the 10k one keeps its default), with real radiographs as queries."""
    start = time.perf_counter()
    tuned = recall.probe(env.db, sets.embedding_models["large"], env.settings.target_recall)
    probe_s = round(time.perf_counter() - start, 1)
    queries = [png for _, png in data.radiographs(QUERY_IMAGES, seed=1)]
    return {"tuned_large": tuned.describe(), "ladder_large": tuned.ladder, "probe_s": probe_s,  # the ladder: plateau or not
            "runs": match_bench.run(env, sets, queries, n_queries)}


if __name__ == "__main__":
    main()
