"""The bench report: targets judged against the figures, JSON on disk, and a markdown rendering."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LIVE_NOTE = "500 at a time into the full model"
FULL_SIZES = {"ingest_images": 500, "n_small": 10_000, "n_large": 100_000}


@dataclass(frozen=True)
class Target:
    id: str
    what: str
    goal: str
    value: Callable[[dict], float | None]  # figures -> measured value (None when the section failed)
    met: Callable[[float], bool]
    unit: str = ""


def _get(figures: dict, *path):
    node = figures
    for key in path:
        if node is None:
            return None
        node = node[key] if isinstance(node, list) else node.get(key)
    return node


def _match(figures: dict, stat: str):
    rows = figures.get("match") or []
    return rows[-1][stat] if rows else None


def _recall_at_speed(figures: dict, partition: str):
    """The best recall@10 among the ef_search values whose p50 is within 5 ms (0.0 if none is)."""
    hnsw = _get(figures, "search", partition, "hnsw") or {}
    if not hnsw:
        return None
    return max([r["recall_at_10"] for r in hnsw.values() if r["p50_ms"] <= 5.0], default=0.0)


def _worst_default_recall(figures: dict):
    found = [_get(figures, "search", kind, "default", "recall_at_10") for kind in ("clustered", "uniform", "cone", "radiographs")]
    return min([r for r in found if r is not None], default=None)


def _match_at_million(figures: dict, stat: str):
    rows = figures.get("match") or []
    return rows[-1][stat] if rows and rows[-1]["references"] >= 1_000_000 else None


TARGETS = [
    Target("a1", "Ingestion throughput (pipeline, default batch)", ">= 16 images/s",
           lambda f: _get(f, "ingest", "images_per_s"), lambda v: v >= 16, " img/s"),
    Target("a2", "Ingestion speed-up vs one-at-a-time", ">= 3x",
           lambda f: _get(f, "ingest", "speedup_vs_old"), lambda v: v >= 3, "x"),
    Target("b1", "Match p50, largest reference set", "<= 120 ms", lambda f: _match(f, "p50_ms"),
           lambda v: v <= 120, " ms"),
    Target("b2", "Match p95, largest reference set", "<= 200 ms", lambda f: _match(f, "p95_ms"),
           lambda v: v <= 200, " ms"),
    Target("c1", "HNSW recall@10 at p50 <= 5 ms (clustered vectors)", ">= 0.98",
           lambda f: _recall_at_speed(f, "clustered"), lambda v: v >= 0.98),
    Target("c2", "HNSW recall@10 at p50 <= 5 ms (uniform vectors, worst case)", ">= 0.98",
           lambda f: _recall_at_speed(f, "uniform"), lambda v: v >= 0.98),
    Target("c3", "Filtered search returns k rows (both filters)", "all queries",
           lambda f: None if not _get(f, "search", "filtered") else float(all(
               r["all_returned_k"] for r in f["search"]["filtered"].values())), lambda v: v == 1.0),
    Target("m1", "Match p50 at 1M references (`--scale 1m`)", "<= 50 ms", lambda f: _match_at_million(f, "p50_ms"),
           lambda v: v <= 50, " ms"),
    Target("m2", "Match p95 at 1M references (`--scale 1m`)", "<= 100 ms", lambda f: _match_at_million(f, "p95_ms"),
           lambda v: v <= 100, " ms"),
    Target("c4", "Default search recall@10, the worst distribution measured (after the recall probe)", ">= 0.98",
           lambda f: _worst_default_recall(f), lambda v: v >= 0.98),
    Target("e1", "Explorer warm view (cached map)", "<= 2 s", lambda f: _get(f, "explorer", "warm_s"),
           lambda v: v <= 2.0, " s"),
    Target("f1", "Peak RSS, dashboard resources + largest set", "<= 2560 MB", lambda f: _get(f, "memory", "peak_mb"),
           lambda v: v <= 2560, " MB"),
    Target("h1", "API matches/s, 16 clients, match queue vs one image per encoder call", ">= 2x",
           lambda f: _get(f, "api", "speedup_16_clients"), lambda v: v >= 2, "x"),
    Target("h2", "API p95, 16 clients, match queue", "< 1000 ms", lambda f: _get(f, "api", "batching", "16", "p95_ms"),
           lambda v: v < 1000, " ms"),
    Target("i1", "`raiox match IMAGE` from the shell, one image (median, ready-made tower stored)", "<= 3 s",
           lambda f: _get(f, "cli", "warm", "median_s"), lambda v: v <= 3.0, " s"),
    Target("l1", "Bulk vector writes (COPY + one index build) at the largest set", ">= 5000 vectors/s",
           lambda f: _get(f, "bulk", "vectors", "bulk_vectors_per_s"), lambda v: v >= 5000, "/s"),
    Target("l2", "`restore` of an archive, end to end (images stored, index built)", ">= 5000 references/s",
           lambda f: _get(f, "bulk", "restore", "references_per_s"), lambda v: v >= 5000, "/s"),
    Target("k1", "Similarity map vs one match (same query bytes, median of pairs)", "<= 1.5x",
           lambda f: _get(f, "explain", "map_vs_match"), lambda v: v <= 1.5, "x"),
    Target("k2", "Occlusion check with deletion curves, ViT-B-32", "<= 3 s", lambda f: _get(f, "explain", "occlusion_s"),
           lambda v: v <= 3.0, " s"),
]


def judge(figures: dict, full: bool) -> list[dict]:
    """Each target with its measured value and met: true/false, or null when not measured at full size."""
    out = []
    for t in TARGETS:
        try:
            value = t.value(figures)
        except (KeyError, TypeError, IndexError):
            value = None
        met = None if value is None or not full else bool(t.met(value))
        out.append({"id": t.id, "what": t.what, "target": t.goal, "value": value, "unit": t.unit, "met": met})
    return out


def _fmt(value, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        value = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value}{unit}"


def _verdict(met) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


def markdown(report: dict) -> str:
    m, v, s, f = report["machine"], report["versions"], report["settings"], report["figures"]
    lines = [
        f"# Raiox bench, {report['started'][:10]}{' (quick sizes)' if report['quick'] else ''}",
        "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_flags'])}), {m['ram_gb']} GB RAM, "
        f"GPU: {m['gpu']}, {m['os']}, virtualised: {m['hypervisor']}. "
        f"Load average (1 min) before/after: {report['load']['before']:.2f} / {report['load']['after']:.2f}.",
        "",
        "**Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "**Settings:** " + ", ".join(f"{k}={val}" for k, val in s.items()) + ".",
        "",
        f"Wall time {report['duration_s'] / 60:.1f} min. 1-min load average at the end of each section (bench included): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report.get("section_load", {}).items()) + ".",
        "",
        "## Targets",
        "",
        "| | figure | measured | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for t in report["targets"]:
        lines.append(f"| {t['id']} | {t['what']} | {_fmt(t['value'], t['unit'])} | {t['target']} | {_verdict(t['met'])} |")
    lines += ["", "## Figures", ""] + _details(f)
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    if report["errors"]:
        lines += ["", "## Sections that failed", ""] + [f"- **{k}**: {e}" for k, e in report["errors"].items()]
    return "\n".join(lines) + "\n"


def _run_cells(run: dict) -> str:
    """images/s, seconds and page faults of one ingestion run (a run without a page-fault count shows -)."""
    return f"{run['images_per_s']} | {run['seconds']} | {run.get('page_faults_per_image', '-')} |"


def _details(f: dict) -> list[str]:
    out: list[str] = []
    if ing := f.get("ingest"):
        old, current = ing["old_one_at_a_time"], ing.get("one_at_a_time_current_encoder")
        out += [f"### (a) Ingestion, {ing['images']} synthetic radiographs, local storage, embedded PostgreSQL", "",
                "| way | encoder | images/s | seconds | page faults/image |", "|---|---|---|---|---|",
                f"| old: one at a time (1 model call, 1 INSERT + commit each) | {old['encoder']} | {_run_cells(old)}"]
        if current:
            out.append(f"| one at a time, current encoder | {current['encoder']} | {_run_cells(current)}")
        nb = ing["batched_no_overlap"]
        out.append(f"| batched, no overlap (batch {nb['batch']}) | {ing['encoder']} | {_run_cells(nb)}")
        out += [f"| pipeline, batch {bs}{' (default)' if int(bs) == ing['default_batch_size'] else ''} | "
                f"{ing['encoder']} | {_run_cells(r)}" for bs, r in ing["pipeline"].items()]
        if rounds := ing.get("paired_rounds"):
            out += ["", f"The old way and the default pipeline ran back to back {len(rounds)} time(s); the rows above "
                    "show the median run of each, and the speed-up is the median of the pairs' ratios:", "",
                    "| pair | old way img/s | pipeline img/s | speed-up |", "|---|---|---|---|"]
            out += [f"| {i} | {r['old']['images_per_s']} | {r['pipeline']['images_per_s']} | {r['speedup']}x |"
                    for i, r in enumerate(rounds, 1)]
        out.append("")
    if rows := f.get("match"):
        stages = list(rows[0]["stages_p50_ms"])  # as the run timed them (older runs: prepare ... vote_and_log)
        out += ["### (b) Match latency, end to end (bytes -> normalise -> embed -> search -> vote -> log), warm", "",
                "| references | queries | p50 ms | p95 ms | " + " | ".join(stages) + " |",
                "|---|---|---|---|" + "---|" * len(stages)]
        out += [f"| {r['references']} | {r['queries']} | {r['p50_ms']} | {r['p95_ms']} | "
                + " | ".join(str(r["stages_p50_ms"].get(k, "-")) for k in stages) + " |"
                for r in rows]
        timed = ("of the same matches (vote with its label checks)" if "vote" in stages
                 else "of separate runs of the steps, without the vote's label checks")
        out += ["", f"Stages are p50 ms {timed}; the encoder runs {rows[-1].get('encoder', 'fp32')}. A match stores "
                "nothing, so it does not encode a PNG.", ""]
    if search := f.get("search"):
        out += [f"### (c) Vector search, {search['vectors']} x 512, k={search['k']}, {search['queries']} queries "
                "(through Database.search)", "", "| vectors | search | recall@10 | p50 ms | p95 ms |",
                "|---|---|---|---|---|"]
        parts = [part for part in ("clustered", "uniform", "cone", "radiographs") if part in search]
        for part in parts:
            p = search[part]
            out.append(f"| {part} | exact (seq scan) | 1 | {p['exact']['p50_ms']} | {p['exact']['p95_ms']} |")
            out += [f"| {part} | HNSW ef_search={ef} | {r['recall_at_10']} | {r['p50_ms']} | {r['p95_ms']} |"
                    for ef, r in p["hnsw"].items()]
            if d := p.get("default"):
                out.append(f"| {part} | **default** (probe: {d['tuned']}) | {d['recall_at_10']} | {d['p50_ms']} | "
                           f"{d['p95_ms']} |")
        if all("nn_cosine" in search[part] for part in parts):
            out += ["", "Mean cosine of a query's nearest / 10th nearest reference: " + ", ".join(
                f"{part} {search[part]['nn_cosine']} / {search[part]['tenth_cosine']}" for part in parts)
                + f". The radiograph vectors are copies of {search.get('radiograph_images', '-')} rendered images' vectors."]
        out += ["", "| filter | candidate rows | path | min rows returned | recall@10 | p50 ms | p95 ms | exact p50 ms |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {name} | {r['candidate_rows']} ({r['share']:.0%}) | {r['path']} | {r['min_results']} | "
                f"{r['recall_at_10']} | {r['p50_ms']} | {r['p95_ms']} | {r['exact_p50_ms']} |"
                for name, r in search["filtered"].items()]
        out.append("")
    if enc := f.get("encoder"):
        out += [f"### (d) Encoder: {enc['gflop_per_image']} GFLOP/image; dense fp32 matmul "
                f"{enc['matmul']['median_gflops']} GFLOP/s (best {enc['matmul']['best_gflops']}) on "
                f"{enc['matmul']['threads']} threads", "",
                "| variant | ms/image | images/s | GFLOP/s | vs matmul |", "|---|---|---|---|---|"]
        out += [f"| {name} | {r['ms_per_image']} | {r['images_per_s']} | {r['gflops']} | "
                f"{r['efficiency_vs_matmul']:.0%} |" for name, r in enc["variants"].items()]
        out.append("")
        for key, name in (("int8_dynamic", "int8 dynamic (torch.ao, one range per call)"),
                          ("int8", "int8 per-token (raiox_core.quantise)")):
            q = enc[key]
            out.append(f"- {name}: cosine to fp32 min {q['cosine_to_fp32_min']} (mean {q['cosine_to_fp32_mean']}); "
                       f"batch-vs-single max |diff| {q['batch_vs_single_max_abs_diff']}; speed-up at batch 16 "
                       f"{q['speedup_vs_fp32']}x; adoptable: {q['adoptable']}.")
        out += ["", f"Over {enc['images']} images, {enc['weights']} weights; the load-time probe check gave cosine "
                f"{enc['int8']['probe_min_cosine']}. int8 GFLOP/s count the fp32 model's FLOPs. ONNX Runtime: "
                f"{enc['onnxruntime']}. Adopted: {enc['adopted']}.", ""]
    if ex := f.get("explorer"):
        if scale := ex.get("scale"):
            out += ["### (e) Explorer at scale: first view (PCA preview), UMAP in the background, rerun", "",
                    "| references | first view s | UMAP cold s (fit s) | rerun s | points drawn | figure MB | 1-min load |",
                    "|---|---|---|---|---|---|---|"]
            out += [f"| {n} | {r['first_view_s']} | {r['umap_cold_s']} ({r['umap_fit_s']}) | {r['rerun_s']} | "
                    f"{r['points_drawn']} | {r['figure_json_mb']} | {r['load_1min']} |" for n, r in scale.items()]
            out.append("")
        out += [f"### (e) Explorer, {ex['points']} references, {ex['method']}", "",
                "| start | process s | fetch rows s | projection s | frame + figure s | view s (excl. imports) |",
                "|---|---|---|---|---|---|"]
        for name, label in (("cold", "cold"), ("after_warmup", "after the dashboard's numba warm-up"), ("warm", "warm")):
            if r := ex.get(name):  # reports before the warm-up existed have no such row
                out.append(f"| {label} ({r['source']}) | {r['process_s']} | {r['fetch_rows_s']} | {r['projection_s']} | "
                           f"{r['frame_and_figure_s']} | {r['view_s']} |")
        w = ex["warm"]
        running = w["fetch_rows_s"] + w["memory_cache_s"] + w["frame_and_figure_s"]
        imported = {name: ex[name].get("umap_imported") for name in ("cold", "warm")}
        out += ["", f"numba cache: {ex['numba_cache']}. Warm = first view after a restart: the map's coordinates are "
                f"read from disk (npz, no pickle) and the UMAP reducer is loaded only when a query is placed on the "
                f"map (umap imported during the view: cold {_yes_no(imported['cold'])}, warm "
                f"{_yes_no(imported['warm'])}). In a running server the map comes from the in-process cache in "
                f"{w['memory_cache_s']} s, so a view costs about {running:.2f} s (rows + cache + figure)."]
        if after := ex.get("after_warmup"):
            out.append(f"The warm-up (`python -m raiox_core.numba_warmup`, what the dashboard starts at start-up) took "
                       f"{after['warmup_s']} s, on a numba cache of its own, empty as the cold row's was, before "
                       f"its row's process ran.")
        out.append("")
    if mem := f.get("memory"):
        out += [f"### (f) Memory, {mem['references']} references", "", "| step | RSS MB | peak MB |", "|---|---|---|"]
        out += [f"| {name} | {r['rss_mb']} | {r['peak_mb']} |" for name, r in mem["marks"].items()]
        if "text_tower_mb" in mem:
            out.append(f"\nText tower dropped after load: {mem['text_tower_mb']} MB of fp32 weights not held.")
        if mem.get("postgres_pss_mb") is not None:
            out.append(f"\nPostgreSQL (PSS of the bench server's processes, shared buffers counted once): "
                       f"{mem['postgres_pss_mb']} MB.")
        out.append("")
    if api := f.get("api"):
        out += [f"### (h) HTTP API, POST /v1/match of one image, {api['references']} references, `raiox api` in its own "
                "process", "", "| serving | clients | requests | matches/s (range of rounds) | p50 ms | p95 ms | mean batch |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {way.replace('_', ' ')} | {clients} | {r['requests']} | {r['matches_per_s']} "
                f"({r['matches_per_s_range'][0]}-{r['matches_per_s_range'][1]}) | {r['p50_ms']} | {r['p95_ms']} | "
                f"{r.get('mean_batch', '-')} |" for way in ("one_at_a_time", "batching") for clients, r in api[way].items()]
        out += ["", f"With 16 clients the match queue serves {api['speedup_16_clients']}x the matches/s of one image per "
                f"encoder call (`RAIOX_MATCH_BATCHING=off`; median of the rounds {api['speedup_rounds']}), and "
                f"{api['speedup_vs_one_client_serial']}x what one client gets served one request at a time. The "
                "clients run on the same machine and share its cores.", ""]
    if exp := f.get("explain"):
        out += [f"### (k) Explanations, {exp['rounds']} pairs of one match and one similarity map (same query bytes, "
                f"alternated), encoder {exp['encoder']}", "", "| | p50 ms | p95 ms |", "|---|---|---|",
                f"| match (bytes -> vote -> log) | {exp['match']['p50_ms']} | {exp['match']['p95_ms']} |",
                f"| similarity map (bytes -> reference from storage -> one forward of both) | {exp['map']['p50_ms']} | "
                f"{exp['map']['p95_ms']} |", "",
                f"Map vs match: {exp['map_vs_match']}x (median of the pairs' ratios, {exp['pair_ratios_min_max'][0]}-"
                f"{exp['pair_ratios_min_max'][1]}; ratio of medians {exp['map_vs_match_of_medians']}x); drawing both "
                f"overlays {exp['overlays_ms']} ms. Occlusion check: {exp['occlusion_images']} images in one batched "
                f"pass ({exp['deletion_steps']} deletion steps, {exp['random_orders']} random orders): "
                f"{exp['occlusion_s']} s ({exp['occlusion_ms_per_image']} ms/image; fp32 {exp['occlusion_fp32_s']} s).", ""]
    if refs := f.get("references"):
        out += [f"### (g) Bulk load and HNSW build (m={refs['hnsw_m']}, ef_construction={refs['hnsw_ef_construction']})", "",
                "| partition | vectors | COPY s | rows/s | HNSW build s | index MB |", "|---|---|---|---|---|---|"]
        out += [f"| {key} ({r['kind']}) | {r['vectors']} | {r['copy_s']} | {r['copy_rows_per_s']} | {r['hnsw_build_s']} |"
                f" {r['hnsw_index_mb']} |" for key, r in refs.items() if isinstance(r, dict)]
        out.append(f"\nReference rows COPY: {refs['copy_references_s']} s; embeddings table with all partitions and their indexes (HNSW included): "
                   f"{refs['embeddings_table_mb']} MB.")
    if bulk := f.get("bulk"):
        v, r = bulk["vectors"], bulk["restore"]
        out += [f"### (l) Bulk writes, {v['vectors']} vectors x 512 (Database.add_embeddings)", "",
                "| way | vectors | seconds | vectors/s |", "|---|---|---|---|",
                f"| through the live index (upserts of {LIVE_NOTE}) | {v['live_sample']} | {v['live_s']} | "
                f"{v['live_vectors_per_s']} |",
                f"| bulk path: COPY without the index | {v['vectors']} | {v['bulk_copy_s']} | {v['bulk_copy_vectors_per_s']} |",
                f"| bulk path: COPY + one index build ({v['bulk_index_build_s']} s) | {v['vectors']} | {v['bulk_total_s']} | "
                f"{v['bulk_vectors_per_s']} |", "",
                f"`raiox restore` of {r['references']} references ({r['archive_mb']} MB archive, small images): "
                f"{r['seconds']} s, {r['references_per_s']} references/s; stages (s): "
                + ", ".join(f"{k} {t}" for k, t in r["stages_s"].items()) + ".", ""]
    if cli := f.get("cli"):
        out += [f"### (i) One image from the shell: `raiox match IMAGE`, {cli['runs']} run(s) each, {cli['weights']} "
                "weights", "", "| cache dir | median s | min s | max s | CPU s (median) |", "|---|---|---|---|---|"]
        for name, what in (("cold", "empty (the int8 check runs, the tower is built)"),
                           ("first_after_demo", "as `raiox demo` left it (the first match after the demo)"),
                           ("warm", "with the ready-made tower (every later match)"),
                           ("no_model", "`raiox stats` (no model: start-up and database only)")):
            if r := cli.get(name):
                out.append(f"| {what} | {r['median_s']} | {r['min_s']} | {r['max_s']} | {r.get('cpu_median_s', '-')} |")
        out.append(f"\nEmbedded PostgreSQL {cli['embedded_postgres']}; the demo seed took {cli['seed_s']} s; 1-minute "
                   f"load before each round: {', '.join(map(str, cli.get('load_1min', []))) or 'not recorded'}.")
    if train := f.get("train"):
        out += ["", "### (j) `raiox train`: adapter, 5-fold grouped cross-validation + final fit (bench/train_bench.py)", "",
                "| references | dim | cross-validation s | final fit s | total s | model top-1 frozen -> adapter | adopted |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['references']} | {r['dim']} | {r['cross_validation_s']} | {r['final_fit_s']} | {r['total_s']} | "
                f"{r['frozen_top1_model']:.1%} -> {r['adapted_top1_model']:.1%} | {_yes_no(r['adopt'])} |"
                for r in train.values()]
    return out


def _yes_no(value: bool | None) -> str:
    return "not measured" if value is None else "yes" if value else "no"


def write(report: dict, json_path: Path | None, md_path: Path | None) -> None:
    text = json.dumps(report, indent=2, default=str)
    for path, body in ((json_path, text), (md_path, markdown(report))):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
