"""Prometheus metrics of one API process: requests, durations, match stages, references, the model."""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from raiox_core.errors import RaioxError
from raiox_core.match import STAGES

# 5 ms to 60 s: a search takes milliseconds, an encoder call on a busy two-core machine seconds.
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Live:
    """Gauges read when scraped: the reference count and the loaded model."""

    def __init__(self, resources):
        self.resources = resources

    def collect(self):
        references = GaugeMetricFamily("raiox_references", "References in the database.")
        try:
            references.add_metric([], self.resources.db.count())
        except RaioxError:  # the database is down: no value rather than a failed scrape
            references.add_metric([], math.nan)
        yield references
        info = GaugeMetricFamily("raiox_model_info", "The loaded image model (1).",
                                 labels=["model_id", "precision", "trained"])
        state = self.resources.model
        if state is not None and state.usable:
            e = state.embedder
            info.add_metric([e.embedding_model, e.precision, str(e.trained).lower()], 1)
        yield info


class Metrics:
    def __init__(self, resources):
        self.registry = CollectorRegistry()
        self.requests = Counter("raiox_requests", "HTTP requests answered.", ["route", "status"], registry=self.registry)
        self.duration = Histogram("raiox_request_duration_seconds", "Time to answer a request.", ["route"],
                                  buckets=STAGE_BUCKETS, registry=self.registry)
        self.stage = Histogram("raiox_match_stage_seconds", "Time per image in each stage of a match.", ["stage"],
                               buckets=STAGE_BUCKETS, registry=self.registry)
        self.top1 = Histogram("raiox_match_top1_similarity", "Cosine similarity of each match's nearest reference.",
                              buckets=(0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0), registry=self.registry)
        self.batch_size = Histogram("raiox_match_batch_size", "Images per encoder call of the match queue.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.ingested = Counter("raiox_ingest_images", "Files sent for ingestion, by result.", ["result"],
                                registry=self.registry)
        self.registry.register(_Live(resources))

    def observe_match(self, result) -> None:
        for stage in STAGES:
            if stage in result.timings:
                self.stage.labels(stage).observe(result.timings[stage])
        if result.matches:
            self.top1.observe(result.matches[0].similarity)

    def observe_ingest(self, report) -> None:
        for result in ("ingested", "duplicate", "rejected"):
            self.ingested.labels(result).inc(len(report.of(result)))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every request by its route template (/v1/references/{reference_id}), never its raw
    path: ids and probes of unknown paths must not make a label per value."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - start)
