"""(h) The HTTP API under load: matches/s and latency with 1 and 16 concurrent clients, without and with the
match queue (raiox_core.batching), each against `raiox api` as its own process on the bench's database."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from raiox_core.api_keys import create_key

from . import references
from .env import BenchEnv
from .timing import summarize

CLIENTS = (1, 16)
START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(env: BenchEnv, data_dir: Path, batching: bool) -> dict[str, str]:
    s = env.settings
    out = {k: v for k, v in os.environ.items() if not k.startswith("RAIOX_")}  # the user's settings stay out
    out.update(RAIOX_DATABASE_URL=s.database_url, RAIOX_DATA_DIR=str(data_dir), RAIOX_MODEL=s.model,
               RAIOX_PRETRAINED=s.pretrained, RAIOX_DEVICE="cpu", RAIOX_PRECISION=s.precision, HF_HUB_OFFLINE="1",
               RAIOX_API_RATE_PER_MIN="1000000", RAIOX_MATCH_BATCHING="on" if batching else "off")
    return out


@contextmanager
def _server(env: BenchEnv, batching: bool):
    """The base URL of a ready `raiox api`; stopped afterwards."""
    name = "api-batching" if batching else "api-one-at-a-time"
    port, log_path = _free_port(), env.root / f"{name}.log"
    with open(log_path, "w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "raiox_core.cli", "api", "--port", str(port)],
                                   env=_server_env(env, env.root / name, batching), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, url, log_path)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_ready(process, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
    raise RuntimeError(f"raiox api did not become ready (exit {process.poll()}): {tail}")


def _clients(url: str, key: str, queries: list[bytes], clients: int, requests: int) -> dict:
    """`requests` POST /v1/match of one image each, shared among `clients` threads that send back to back
    (after one untimed warm-up request each): seconds of the whole, each latency, the mean encoder batch."""
    per_client = max(1, requests // clients)
    latencies: list[float] = []
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as http:
            mine = [queries[(number * per_client + i) % len(queries)] for i in range(per_client)]
            http.post("/v1/match", files={"image": ("warm-up.png", mine[0], "image/png")})  # connection and caches
            start.wait()
            for data in mine:
                began = time.perf_counter()
                answer = http.post("/v1/match", files={"image": ("query.png", data, "image/png")})
                latencies.append(time.perf_counter() - began)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:120]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began, before = time.perf_counter(), _batch_counts(url)
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(latencies)} matches failed, e.g. {failures[0]}")
    calls, images = (a - b for a, b in zip(_batch_counts(url), before))
    return {"seconds": wall, "latencies": latencies, "mean_batch": images / calls if calls else None}


def _batch_counts(url: str) -> tuple[float, float]:
    """(encoder calls, images) of the server's match queue so far."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "raiox_match_batch_size"]
    values = {s.name: s.value for s in family.samples}
    return values["raiox_match_batch_size_count"], values["raiox_match_batch_size_sum"]


def _summary(runs: list[dict]) -> dict:
    """One way and client count over its rounds: the median round's rate, latencies of all rounds pooled."""
    rates = sorted(len(r["latencies"]) / r["seconds"] for r in runs)
    out = {"rounds": len(runs), "requests": sum(len(r["latencies"]) for r in runs),
           "matches_per_s": round(statistics.median(rates), 2), "matches_per_s_range": [round(rates[0], 2), round(rates[-1], 2)],
           **summarize([t for r in runs for t in r["latencies"]])}
    batches = [r["mean_batch"] for r in runs if r["mean_batch"] is not None]
    if batches:
        out["mean_batch"] = round(statistics.mean(batches), 2)
    return out


def run(env: BenchEnv, n_references: int, queries: list[bytes], requests: int, rounds: int) -> dict:
    """Both ways of serving (one image per encoder call; the match queue), each with 1 and 16 clients, in
    `rounds` back-to-back rounds: the VM's speed drifts within minutes, so each round sees one machine state."""
    references.load(env, n_references, n_references, kinds=())  # the server searches the loaded model's own partition
    _, key = create_key(env.db, "bench-api", "match")
    ways = {"one_at_a_time": False, "batching": True}
    runs: dict[tuple[str, int], list[dict]] = {(way, c): [] for way in ways for c in CLIENTS}
    with _server(env, False) as off, _server(env, True) as on:  # both up at once; the idle one costs no CPU
        urls = {"one_at_a_time": off, "batching": on}
        for _ in range(rounds):
            for way in ways:
                for clients in CLIENTS:
                    runs[way, clients].append(_clients(urls[way], key, queries, clients, requests))
    out: dict = {"references": n_references, "images_per_request": 1,
                 **{way: {str(c): _summary(runs[way, c]) for c in CLIENTS} for way in ways}}
    rate = {key: [len(r["latencies"]) / r["seconds"] for r in value] for key, value in runs.items()}
    pairs = [b / a for a, b in zip(rate["one_at_a_time", 16], rate["batching", 16])]
    out["speedup_rounds"] = [round(x, 2) for x in pairs]
    out["speedup_16_clients"] = round(statistics.median(pairs), 2)  # the same 16 clients, with and without the queue
    out["speedup_vs_one_client_serial"] = round(out["batching"]["16"]["matches_per_s"]
                                                / out["one_at_a_time"]["1"]["matches_per_s"], 2)
    return out
