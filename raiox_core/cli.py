"""The `raiox` command: argument parsing and printing; the work is done by raiox_core's modules."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import sys
import threading
from pathlib import Path

from . import packaged, process
from .config import MAX_K, Settings
from .errors import RaioxError
from .text import printable as shown  # every user-supplied string in human output goes through it

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _int_between(low: int, high: int):
    """An argparse type for a whole number in [low, high]: a usage error, never a database's overflow."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high:,}")
        return value

    return parse


MAX_LIST = 1_000_000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raiox", description="Identify dental implants on X-rays by similarity to labelled references.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", help="seed synthetic references if the database is empty, then start the dashboard")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--no-app", action="store_true", help="only seed; do not start the dashboard")

    s = sub.add_parser("app", help="start the dashboard (headless)")
    s.add_argument("--port", type=int, default=8501)

    s = sub.add_parser("ingest", help="add reference images: files, folders or zip archives")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--manufacturer")
    s.add_argument("--model")
    s.add_argument("--diameter", type=float, help="diameter in mm")
    s.add_argument("--group", metavar="ID", help="the files are X-rays of one physical implant: evaluation and "
                   "training hold them out together")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("match", help="find the most similar references for X-ray images")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--k", type=_int_between(1, MAX_K), default=3, help=f"references to show (1-{MAX_K})")
    s.add_argument("--manufacturer")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("explain", help="where an X-ray and a reference look alike: similarity map, occlusion check")
    s.add_argument("image", metavar="IMAGE")
    s.add_argument("ref_id", type=int, metavar="REF_ID", help="the reference's id (see raiox match or raiox list)")
    s.add_argument("--out", required=True, metavar="PATH.png", help="where to write the overlay figure (PNG)")
    s.add_argument("--occlusion", action="store_true", help="also grey out each patch in turn and draw the "
                   "deletion curve: checks whether the map is faithful to the model (a few seconds)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("list", help="list references")
    s.add_argument("--manufacturer")
    s.add_argument("--limit", type=_int_between(1, MAX_LIST), default=1000)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("stats", help="counts per manufacturer and vectors per embedding model")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("evaluate", help="how often matching is right on the references (leave one group out), "
                       "and the calibrated confidence threshold")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("train", help="fit an adapter on the references' stored vectors; adopt it only when "
                       "grouped cross-validation shows it certainly beats the frozen model")
    s.add_argument("--off", action="store_true", help="switch the active adapter off (its vectors are kept)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("delete", help="delete references and their images")
    s.add_argument("ids", nargs="+", type=int, metavar="ID")

    s = sub.add_parser("doctor", help="check the database, storage and model")
    s.add_argument("--repair", action="store_true", help="also rebuild vector indexes built with older HNSW "
                   "parameters, and remove stored images that no reference points to (older than 10 minutes: "
                   "younger ones may belong to an ingestion in progress)")

    s = sub.add_parser("reembed", help="compute a model's vectors for every reference that lacks them")
    s.add_argument("--model")
    s.add_argument("--pretrained")

    s = sub.add_parser("backup", help="write references, vectors and images to one archive file")
    s.add_argument("path", metavar="PATH")

    s = sub.add_parser("restore", help="load an archive written by `raiox backup` (existing references are kept)")
    s.add_argument("path", metavar="PATH")

    s = sub.add_parser("api", help="start the HTTP API (OpenAPI documentation at /docs)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_int_between(1, 65535), default=8000)

    s = sub.add_parser("keys", help="create, list and revoke keys of the HTTP API")
    keys = s.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="create a key and print it, once")
    k.add_argument("name", metavar="NAME")
    k.add_argument("--scope", required=True, choices=("match", "staff", "webhook"),
                   help="match: match and read; staff: also ingest, relabel and delete; webhook: form webhooks")
    k.add_argument("--json", action="store_true")
    k = keys.add_parser("list", help="list keys (never the keys themselves)")
    k.add_argument("--json", action="store_true")
    k = keys.add_parser("revoke", help="revoke the active key of a name")
    k.add_argument("name", metavar="NAME")

    s = sub.add_parser("bench", help="measure ingestion, matching, search, encoder, explorer, memory and adapter training here")
    s.add_argument("--quick", action="store_true", help="small sizes: checks that every figure is produced")
    s.add_argument("--json", metavar="PATH", help="also write the JSON report to PATH")
    s.add_argument("--scale", choices=["1m"], help="only the figures that change with the reference count, at 1M "
                                                  "references (most of an hour on 2 cores)")
    return p


def _err(message: str) -> None:
    print(f"raiox: {shown(message)}", file=sys.stderr)  # one line, whatever file name the message quotes


class Session:
    """The resources of one command, opened on first use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._db = self._storage = self._embedder = self._db_opening = None
        self.encode_only = False  # set by commands that only encode: a stored ready-made tower will do

    def open_db_in_background(self) -> None:
        """Start opening the database in a thread: the embedded server starts (a subprocess, waited on without
        the GIL) while this thread imports torch; `db` waits for it and raises what it raised."""
        from concurrent.futures import ThreadPoolExecutor

        from .db import open_database

        pool = ThreadPoolExecutor(1, thread_name_prefix="raiox-db")
        self._db_opening = pool.submit(open_database, self.settings)
        pool.shutdown(wait=False)  # the thread ends with its one job

    @property
    def db(self):
        if self._db is None:
            from .db import open_database

            opening, self._db_opening = self._db_opening, None
            self._db = opening.result() if opening is not None else open_database(self.settings)
        return self._db

    @property
    def storage(self):
        if self._storage is None:
            from .storage import open_storage

            self._storage = open_storage(self.settings)
        return self._storage

    @property
    def embedder(self):
        if self._embedder is None:
            from .adapter import with_active_adapter
            from .model_state import UNTRAINED, load_model_state

            state = with_active_adapter(load_model_state(self.settings, self.encode_only), lambda: self.db,
                                        self.settings)
            self._embedder = state.require()
            if state.status == UNTRAINED:
                _err(f"warning: UNTRAINED weights ({state.embedding_model}); matches are not meaningful. {state.reason}")
        return self._embedder

    @property
    def limits(self):
        from .images import ImageLimits

        return ImageLimits.from_settings(self.settings)

    def close(self):
        if self._db_opening is not None:  # opened in the background, never used: wait for it, to close it
            with contextlib.suppress(RaioxError):  # the command stopped before it needed the database
                self.db
        if self._db is not None:
            self._db.close()


def _progress(done: int, total: int, stage: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{done}/{total} {stage:<10}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def cmd_ingest(args, s: Session) -> int:
    from .ingest import LabelOverride, ingest_paths

    labels = LabelOverride(args.manufacturer, args.model, args.diameter, group_id=args.group)
    report = ingest_paths(args.paths, labels, db=s.db, storage=s.storage, embedder=s.embedder, limits=s.limits,
                          progress=_progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        for item in report.items:
            if item.status == "ingested":
                print(f"ingested  {shown(item.file)} -> #{item.id} {shown(item.manufacturer)} {shown(item.model)} "
                      f"{item.diameter_mm:g} mm")
            elif item.status == "duplicate":
                print(f"duplicate {shown(item.file)} (already #{item.id})" + (f": {shown(item.reason)}" if item.reason else ""))
            else:
                print(f"rejected  {shown(item.file)}: {shown(item.reason)}")
        print(f"{len(report.ingested)} ingested, {len(report.duplicates)} duplicates, {len(report.rejected)} rejected")
    return EXIT_REFUSED if report.rejected else EXIT_OK


def cmd_match(args, s: Session) -> int:
    from .db import Filters
    from .match import Refusal, match_files, resolve_manufacturer
    from .threshold import ThresholdPolicy

    s.encode_only = True  # a one-off match: the ready-made tower (ready_encoder) spares it open_clip's import
    s.open_db_in_background()
    with _one_torch_thread():
        filters = Filters(manufacturer=resolve_manufacturer(s.db, args.manufacturer))  # "zimmer" means Zimmer
        answers = match_files([(name, Path(name).read_bytes) for name in args.images], limits=s.limits, db=s.db,
                              embedder=lambda: s.embedder, threshold=ThresholdPolicy(s.settings, s.db), k=args.k,
                              filters=filters)
    if args.json:
        print(json.dumps([a.to_json() for a in answers], indent=2, ensure_ascii=False))
    else:
        for answer in answers:
            if isinstance(answer, Refusal):
                _err(f"{answer.file}: {answer.error}")
            else:
                _print_match(answer)
    return EXIT_REFUSED if any(isinstance(a, Refusal) for a in answers) else EXIT_OK


@contextlib.contextmanager
def _one_torch_thread():
    """Encode on one torch thread unless OMP_NUM_THREADS says otherwise: `raiox match` encodes one image at a
    time, where a second thread gains little and, when another process holds the other core, costs up to seconds
    in spin-waits (bench/README.md, section i)."""
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _print_match(result) -> None:
    print(f"{shown(result.file)}: {shown(result.summary)} (model {shown(result.embedding_model)})")
    for rank, m in enumerate(result.matches, 1):
        print(f"  {rank}. #{m.id} {shown(m.manufacturer)} {shown(m.model)} {m.diameter_mm:g} mm  "
              f"similarity {m.similarity:.1%}  {shown(m.source_filename)}")
    print(f"  confidence threshold {result.threshold * 100:g}%: {result.threshold_source}")


def cmd_explain(args, s: Session) -> int:
    from .explain import MEANING, explain_reference, figure_png
    from .images import prepare_image

    out = Path(args.out)
    # Checked before any work: a figure that cannot be written should not cost a model load first.
    if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK) \
            or (out.exists() and not os.access(out, os.W_OK)):
        raise RaioxError(f"Cannot write the figure to {args.out}: choose a file in a writable folder.")
    try:
        data = Path(args.image).read_bytes()
    except OSError as exc:
        raise RaioxError(f"{args.image} could not be read ({exc.strerror or type(exc).__name__}).") from None
    query = prepare_image(data, s.limits)
    explanation, reference = explain_reference(query.image, args.ref_id, db=s.db, storage=s.storage,
                                               embedder=lambda: s.embedder, occlusion=args.occlusion, file=args.image)
    try:
        out.write_bytes(figure_png(query.image, reference, explanation))
    except OSError as exc:
        raise RaioxError(f"Cannot write the figure to {args.out} ({exc.strerror or type(exc).__name__}).") from None
    if args.json:
        print(json.dumps({**explanation.to_json(), "out": str(out)}, indent=2, ensure_ascii=False))
    else:
        _print_explanation(explanation, out)
        print(f"  {MEANING}")
    return EXIT_OK


def _print_explanation(e, out: Path) -> None:
    from .explain import format_auc

    m, r = e.map, e.reference
    print(f"{shown(e.file)} vs reference #{r.id} ({shown(r.label)} {r.diameter_mm:g} mm): pair cosine "
          f"{m.pair_cosine:.4f} (model {shown(m.embedding_model)}, {m.precision})")
    print(f"  similarity map, {m.grid[0]}x{m.grid[1]} patches (regions that look alike): query mean "
          f"{m.query.mean():.3f}, max {m.query.max():.3f}; reference mean {m.reference.mean():.3f}, max {m.reference.max():.3f}")
    if e.occlusion is not None:
        o, d = e.occlusion, e.occlusion.deletion
        row, col = divmod(int(o.drops.argmax()), m.grid[1])
        print(f"  occlusion: largest drop {o.drops.max():.4f} (row {row + 1}, column {col + 1}), mean {o.drops.mean():.4f}"
              + ("" if o.rank_correlation is None else f"; rank correlation with the map {o.rank_correlation:.2f}"))
        print(f"  deletion AUC {format_auc(d.auc_importance)} (map order) vs {format_auc(d.auc_random)} (random, {d.random_orders} "
              f"orders). {d.verdict}")
    print(f"  wrote {shown(out)}")


def cmd_list(args, s: Session) -> int:
    from .db import Filters
    from .references import listing

    found = listing(s.db, Filters(manufacturer=args.manufacturer), limit=args.limit)
    if args.json:
        print(json.dumps([r.to_json() for r in found], indent=2, ensure_ascii=False))
    else:
        for r in found:
            print(f"#{r.id:<6} {shown(r.manufacturer):<16} {shown(r.model):<10} {r.diameter_mm:>4g} mm  "
                  f"{r.source:<9} {shown(r.source_filename)}")
    return EXIT_OK


def _figure(f: dict) -> str:
    return f"{f['value']:.1%} ({f['low']:.1%}-{f['high']:.1%})"


def cmd_evaluate(args, s: Session) -> int:
    from . import calibration
    from .adapter import active_model_id
    from .embedder import embedding_model_for
    from .threshold import threshold_in_force

    base_model = embedding_model_for(s.settings.model, s.settings.pretrained)  # stored vectors: no model load
    embedding_model = active_model_id(s.db, base_model, s.settings)
    report = calibration.evaluate_references(calibration.LabelledVectors.load(s.db, embedding_model))
    if embedding_model != base_model:
        report["note"] = ("The active adapter was trained on these references, so these figures flatter it; the "
                          "cross-validated ones of `raiox train` do not.")
    report = calibration.save(s.db, embedding_model, report)
    report["threshold"] = threshold_in_force(s.settings, s.db, embedding_model).to_json()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return EXIT_OK
    a = report["accuracy"]
    print(f"{report['references']} references of {shown(embedding_model)} in {report['groups']} groups, left out "
          "a group at a time; the vote of /match (95% intervals, bootstrap over groups):")
    for level, name in (("manufacturer", "manufacturer"), ("model", "model"), ("model_diameter", "model + diameter")):
        print(f"  {name:17} top-1 {_figure(a[f'top1_{level}'])}   top-5 {_figure(a[f'top5_{level}'])}")
    for m in report["by_manufacturer"]:
        print(f"  {shown(m['manufacturer'])} ({m['references']}): manufacturer top-1 {_figure(m['top1_manufacturer'])}, "
              f"model top-1 {_figure(m['top1_model'])}")
    print(f"Confidence (of the {report['confidence_of'] or 'no'} vote): threshold, share answered confidently, "
          "share of those right:")
    for point in report["precision_coverage"][::10]:
        right = "-" if point["precision"] is None else f"{point['precision']:.1%}"
        print(f"  {point['threshold']:.1f}  {point['coverage']:6.1%}  {right}")
    t = report["threshold"]
    print(f"Threshold in force: {t['value'] * 100:g}% ({shown(t['source'])}). Stored as the calibration of "
          f"{report['computed_at'][:10]}.")
    if report.get("note"):
        print(f"Note: {report['note']}")
    return EXIT_OK


def cmd_train(args, s: Session) -> int:
    from . import adapter
    from .embedder import embedding_model_for

    base_model = embedding_model_for(s.settings.model, s.settings.pretrained)  # stored vectors: no model load
    if args.off:
        switched = adapter.deactivate(s.db, base_model)
        if args.json:
            print(json.dumps({"base_model": base_model, "deactivated": switched}, indent=2, ensure_ascii=False))
        else:
            print(f"{', '.join(map(shown, switched))} switched off: {shown(base_model)} answers with its own vectors."
                  if switched else f"No adapter of {shown(base_model)} was active; nothing changed.")
        return EXIT_OK
    report = adapter.train(s.db, base_model, progress=lambda d, t: _progress(d, t, "folds"))
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{report['references']} references of {shown(base_model)} in {report['groups']} groups, "
          f"{report['folds']}-fold grouped cross-validation; the vote of /match (95% intervals, bootstrap over groups):")
    print(f"  {'':22} {'frozen':>22} {'adapter':>22} {'improvement':>24}")
    for level in ("manufacturer", "model"):
        for k in (1, 5):
            key = f"top{k}_{level}"
            gain = report["improvement"][key]
            print(f"  {level + ' top-' + str(k):22} {_figure(report['frozen'][key]):>22} "
                  f"{_figure(report['adapted'][key]):>22} "
                  f"{gain['value']:>+8.1%} ({gain['low']:+.1%} to {gain['high']:+.1%})")
    if report["adopted"]:
        print(f"Adopted as {shown(report['adapter_model'])}: its vectors are stored for every reference and every "
              "door uses it; RAIOX_ADAPTER=off or `raiox train --off` switches back.")
    else:
        print(f"Not adopted: {report['reason']}; nothing changed.")
    return EXIT_OK


def cmd_stats(args, s: Session) -> int:
    from .references import stats_json

    stats = stats_json(s.db)
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        print(f"{stats['references']} references")
        for name, n in stats["by_manufacturer"].items():
            print(f"  {shown(name)}: {n}")
        for embedding_model, n in stats["embedding_models"].items():
            print(f"  vectors {shown(embedding_model)}: {n}")
    return EXIT_OK


def cmd_delete(args, s: Session) -> int:
    from .references import delete_reference
    from .errors import NotFound

    status = EXIT_OK
    for ref_id in args.ids:
        try:
            delete_reference(s.db, s.storage, ref_id)
            print(f"deleted #{ref_id}")
        except NotFound as exc:
            _err(str(exc))
            status = EXIT_REFUSED
    return status


def _precision(embedder) -> str:
    if embedder.precision == "int8":
        return f"int8 (probe vectors within cosine {embedder.int8_min_cosine:.5f} of fp32)"
    if embedder.int8_min_cosine is not None:
        return f"fp32 (int8 reached only cosine {embedder.int8_min_cosine:.5f} on the probes)"
    return "fp32"


def cmd_doctor(args, s: Session) -> int:
    checks: list[tuple[str, bool, str]] = []

    def check(name, fn):
        try:
            checks.append((name, True, fn()))
        except RaioxError as exc:
            checks.append((name, False, str(exc)))

    check("database", lambda: f"{s.db.description}, pgvector {s.db.pgvector_version()}")
    check("storage", lambda: (s.storage.check_writable(), f"{s.storage.description} (writable)")[1])
    check("model", lambda: f"{s.embedder.embedding_model} on {s.embedder.device}, {_precision(s.embedder)}"
                           + ("" if s.embedder.trained else " (UNTRAINED)"))
    if checks[0][1] and s.settings.database_read_url:
        check("replica", s.db.replica_state)
    if checks[0][1]:
        check("vectors", lambda: ", ".join(f"{m}: {n}" for m, n in s.db.stats()["embedding_models"].items()) or "none yet")
        check("indexes", lambda: _index_check(s.db, repair=args.repair))
        check("search", lambda: _recall_check(s.db, s.settings.target_recall, repair=args.repair))
        if checks[1][1]:
            check("images", lambda: _images_check(s.db, s.storage))
            check("orphans", lambda: _orphans_check(s.db, s.storage, repair=args.repair))
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name:<8} {shown(detail)}")
    return EXIT_OK if all(ok for _, ok, _ in checks) else EXIT_REFUSED


def _ids(ids: list[int], shown: int = 20) -> str:
    """"#3, #7 and 12 more": reference ids for one line."""
    return ", ".join(f"#{i}" for i in ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _images_check(db, storage) -> str:
    """References whose stored image is missing: a failure naming them, since no repair can invent the image."""
    from .references import find_missing_images

    missing = find_missing_images(db, storage)
    if not missing:
        return "every reference has its stored image"
    some = "1 reference has" if len(missing) == 1 else f"{len(missing)} references have"
    raise RaioxError(f"{some} no stored image ({_ids(missing)}); ingesting the same image again, or restoring a backup "
                     f"that holds it, puts it back, and `raiox delete {' '.join(map(str, missing[:20]))}` removes them.")


def _orphans_check(db, storage, repair: bool) -> str:
    """Stored images without a reference: counted, or removed with --repair; young ones are left alone."""
    from .references import ORPHAN_GRACE_S, remove_orphans, scan_orphans

    # Never grace 0: an image stored but not yet committed by a running ingestion looks like an orphan.
    old, young = scan_orphans(db, storage)
    done = f"{len(remove_orphans(db, storage, orphans=old))} removed" if repair else \
        f"{len(old)} stored images without a reference"
    if not young:
        return done
    return (f"{done} ({len(young)} younger than {ORPHAN_GRACE_S / 60:g} minutes "
            f"{'kept' if repair else 'not counted'}: they may belong to an ingestion in progress)")


def _recall_check(db, target: float, repair: bool) -> str:
    """Per embedding model, the recall probe's ef_search and measured recall; --repair measures what is
    missing or stale (the vector count changed by a fifth, or another target)."""
    from . import recall

    lines = []
    for embedding_model, n in db.stats()["embedding_models"].items():
        found = recall.recorded(db, embedding_model)
        if repair and (found is None or found.stale(n, target, db.index_type)):
            found = recall.probe(db, embedding_model, target)
        if found is None:
            lines.append(f"{embedding_model}: recall not measured (`raiox doctor --repair` measures it)")
        else:
            stale = " (stale: `raiox doctor --repair` measures again)" if found.stale(n, target, db.index_type) else ""
            lines.append(f"{embedding_model}: {found.describe()}{stale}")
    return "; ".join(lines) or "no vectors yet"


def _index_check(db, repair: bool) -> str:
    """Models without an index (a bulk load was killed before its build) and indexes built with older HNSW
    parameters than the current ones: named, or built and rebuilt with --repair."""
    from .db import HNSW_PARAMS

    def shown(params: dict[str, int]) -> str:
        return ", ".join(f"{key}={value}" for key, value in params.items())

    missing, outdated = db.unindexed_models(), db.outdated_indexes()
    current = shown(HNSW_PARAMS)
    if not missing and not outdated:
        return f"current ({current})"
    if not repair:
        return "; ".join([f"{model}: no index ({n:,} vectors scanned exactly per search; an interrupted bulk load?)"
                          for model, n in missing.items()] + [f"{model}: built with {shown(p)}" for model, p in outdated.items()]) \
            + f" (current: {current}; `raiox doctor --repair` rebuilds, searches go on)"
    for model in missing:
        print(f"Building the missing index of {model}...", flush=True)
        db.build_missing_index(model)
    for model in outdated:
        print(f"Rebuilding the index of {model} with {current}...", flush=True)
        db.rebuild_index(model)
    return f"{len(missing) + len(outdated)} rebuilt with {current}"


def cmd_reembed(args, s: Session) -> int:
    from .references import reembed

    s.settings = s.settings.with_(model=args.model or s.settings.model, pretrained=args.pretrained or s.settings.pretrained)
    added = reembed(s.db, s.storage, s.embedder, progress=lambda d, t: _progress(d, t, "embedding"))
    print(f"{added} references embedded with {s.embedder.embedding_model}")
    _retune(s)
    return EXIT_OK


def _retune(s: Session) -> None:
    """After a bulk write: the recall probe again for each model whose figure went stale (or never was)."""
    print(f"Search recall: {_recall_check(s.db, s.settings.target_recall, repair=True)}")


def cmd_backup(args, s: Session) -> int:
    from .backup import backup

    summary = backup(s.db, s.storage, Path(args.path), progress=_progress)
    print(f"Backed up {summary['references']} references, {summary['vectors']} vectors and their images to {args.path}")
    if not summary["missing"]:
        return EXIT_OK
    some = "1 reference was" if len(summary["missing"]) == 1 else f"{len(summary['missing'])} references were"
    _err(f"{some} left out because their stored image is missing ({_ids(summary['missing'])}); the archive's "
         "manifest.json lists them, and `raiox doctor` says how to put them back.")
    return EXIT_REFUSED


def cmd_restore(args, s: Session) -> int:
    from .backup import restore

    summary = restore(s.db, s.storage, Path(args.path), progress=_progress)
    restored_images = f"; {summary['images_restored']} lost images put back" if summary.get("images_restored") else ""
    print(f"Restored {summary['restored']} references ({summary['skipped']} already present{restored_images}) "
          f"from {shown(args.path)}")
    _retune(s)
    return EXIT_OK


def _bench_runner():
    """bench/ is a development tool beside the package in a checkout; it is not installed with Raiox."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "bench" / "run.py").is_file():
        sys.path.insert(0, str(checkout))
    elif not (Path.cwd() / "bench" / "run.py").is_file():
        raise RaioxError("raiox bench runs from a source checkout of Raiox: clone it, `pip install -e .` "
                         "there and run `raiox bench` in it.")
    else:
        sys.path.insert(0, str(Path.cwd()))
    from bench.run import run_bench

    return run_bench


def cmd_bench(args, s: Session) -> int:
    if args.quick and args.scale:
        raise RaioxError("--quick and --scale measure different things; give one of them.")
    return _bench_runner()(s.settings, quick=args.quick, json_path=args.json, scale=args.scale)


def seed_demo(s: Session) -> int:
    """Ingest the synthetic set while the database holds no references of its own; returns how many were added.

    A seed stopped half-way (Ctrl-C, kill -9) is finished by the next one: copies already stored are skipped.
    """
    from .ingest import Source, ingest
    from .synthetic import demo_files

    files = demo_files()
    counts = {r["source"]: r["count"] for r in s.db.query("count-by-source")}
    synthetic = counts.pop("synthetic", 0)
    if sum(counts.values()) or synthetic >= len(files):
        return 0
    sources = [Source.from_bytes(name, data) for name, data in files]
    report = ingest(sources, db=s.db, storage=s.storage, embedder=s.embedder, limits=s.limits, source="synthetic",
                    progress=_progress)
    return len(report.ingested)


def _demo_embedder(s: Session) -> None:
    """A demo must start anywhere: without reachable weights it runs, loudly, on untrained ones, and says why."""
    s.settings = s.settings.with_(untrained_fallback=True)
    os.environ["RAIOX_UNTRAINED_FALLBACK"] = "1"  # the dashboard started below inherits it, and the reason with it
    s.embedder


def cmd_demo(args, s: Session) -> int:
    s.encode_only = True  # the seed only encodes: its load stores the tower that the suggested `raiox match` uses
    _demo_embedder(s)
    added = seed_demo(s)
    stats = s.db.stats()
    print(f"Seeded {added} synthetic references; the database holds {stats['references']} over "
          f"{len(stats['by_manufacturer'])} manufacturers.")
    if args.no_app:
        print("Match an X-ray with: raiox match IMAGE")
        return EXIT_OK
    s.close()
    return cmd_app(args, s)


def cmd_app(args, s: Session) -> int:
    # The packaged settings go as flags (they apply from any directory); the upload limit follows the core's.
    command = [sys.executable, "-m", "streamlit", "run", str(packaged.dashboard_script()),
               *packaged.streamlit_flags(server_port=args.port, server_maxUploadSize=max(1, round(s.settings.max_upload_mb)))]
    print(f"Raiox dashboard on http://localhost:{args.port}", flush=True)
    os.execv(sys.executable, command)  # replaces this process: Ctrl-C and signals reach streamlit directly


def cmd_api(args, s: Session) -> int:
    try:
        from raiox_api.server import serve  # fastapi and uvicorn only for this command
    except ModuleNotFoundError as exc:
        raise RaioxError(f"raiox api needs {exc.name}, which is not installed; reinstall Raiox (pip install raiox).") from None
    serve(s.settings, host=args.host, port=args.port)
    return EXIT_OK


def cmd_keys(args, s: Session) -> int:
    from . import api_keys

    if args.keys_command == "create":
        key, secret = api_keys.create_key(s.db, args.name, args.scope)
        if args.json:
            print(json.dumps({"name": key.name, "scope": key.scope, "key": secret}))
        else:
            print(secret)
            _err(f"Key {shown(key.name)} ({key.scope}) created; it is shown only now: store it in a secret manager.")
    elif args.keys_command == "list":
        found = api_keys.list_keys(s.db)
        if args.json:
            print(json.dumps([k.to_json() for k in found], indent=2, ensure_ascii=False))
        for k in [] if args.json else found:
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            print(f"{shown(k.name):<24} {k.scope:<8} created {k.created_at:%Y-%m-%d %H:%M}  {state}")
    else:
        api_keys.revoke_key(s.db, args.name)
        print(f"revoked {shown(args.name)}")
    return EXIT_OK


COMMANDS = {
    "demo": cmd_demo, "app": cmd_app, "ingest": cmd_ingest, "match": cmd_match, "list": cmd_list,
    "stats": cmd_stats, "evaluate": cmd_evaluate, "train": cmd_train, "delete": cmd_delete, "doctor": cmd_doctor, "reembed": cmd_reembed,
    "backup": cmd_backup, "restore": cmd_restore, "bench": cmd_bench, "api": cmd_api, "keys": cmd_keys,
    "explain": cmd_explain,
}


class _OneLineLog(logging.Formatter):
    """A log record printed like the command's own messages: one line, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return f"raiox: {shown(record.getMessage())}"


def _log_errors_only() -> None:
    # The level goes on the handler, not only on the root logger: a logger with a level of its own
    # (psycopg sets WARNING) propagates its records to the root's handlers past the root's level, which
    # printed every reconnection warning of the pool during a database outage.
    handler = logging.StreamHandler()
    handler.setLevel(logging.ERROR)
    handler.setFormatter(_OneLineLog())
    logging.basicConfig(level=logging.ERROR, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on usage errors
    _log_errors_only()
    process.configure()  # numba's cache before anything (the bench's probes, the dashboard) imports umap
    session = None
    try:
        session = Session(Settings.from_env())
        return COMMANDS[args.command](args, session)
    except RaioxError as exc:
        _err(str(exc))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        _err("interrupted.")
        return 130
    finally:
        if session is not None:
            session.close()


def run() -> None:
    """The `raiox` entry point: main(), then the exit. After `raiox match` the exit skips the interpreter's
    teardown, which torch makes cost ~0.4 s (bench/README.md, section i): by then the answers are printed, the
    match log is committed and the database closed; the atexit handlers (the embedded server's stop, logging's
    flush) still run, and only once no other thread is left."""
    argv = sys.argv[1:]
    code = main(argv)
    if argv[:1] == ["match"] and threading.active_count() == 1:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said there
                stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
