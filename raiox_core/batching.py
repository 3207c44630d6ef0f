"""A small queue in front of the embedder: images that arrive together are encoded in one model call.

On a CPU an image costs the encoder about half as much in a batch of 8-16 as alone (the weights are read
once per call, and one image's matrix products are too small to keep both cores busy), so a server that
encodes each request's image on its own leaves half of the encoder's rate unused under load. `BatchingEncoder.encode_one` is what `match_image` calls: it queues the
image and blocks until a single worker thread has encoded it together with whatever else arrived within
the batch window. Vectors do not depend on their batch-mates (the int8 encoder scales each token on its
own, see quantise.py), so batching changes timing only, never an answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .errors import Overloaded

log = logging.getLogger(__name__)


@dataclass
class _Item:
    image: object  # a PIL image, as Embedder.encode takes it
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class BatchingEncoder:
    """An Embedder's stand-in for concurrent callers: the same attributes, with encode_one batched.

    At most `max_queue` images wait for the worker (a batch being collected counts; one being encoded
    does not); one more raises Overloaded at once rather than letting the backlog, and its memory, grow.
    `on_batch(size)` is called after each model call (the API's batch-size histogram).
    """

    def __init__(self, embedder, *, window_ms: float = 5.0, max_batch: int = 16, max_queue: int = 64,
                 on_batch: Callable[[int], None] | None = None):
        self.embedder = embedder
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._waiting: deque[_Item] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="raiox-batching-encoder", daemon=True)
        self._worker.start()

    def __getattr__(self, name: str):
        if name == "embedder":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        # embedding_model, trained, precision, dim, encode (a batch is already a batch)...: the embedder's own.
        return getattr(self.embedder, name)

    @property
    def waiting(self) -> int:
        """Images queued and not yet in a model call."""
        return len(self._waiting)

    def encode_one(self, image) -> np.ndarray:
        """The image's unit vector, encoded in a batch with the images queued around it; Overloaded when full.

        An exception of the encoder is raised here, in the caller's thread.
        """
        item = _Item(image)
        with self._changed:
            if self._closed:
                raise Overloaded("The server is shutting down; retry on its next start.")
            if len(self._waiting) >= self.max_queue:
                raise Overloaded(f"The server is busy: {self.max_queue} images are already waiting for the encoder; "
                                 "retry in a moment.")
            self._waiting.append(item)
            self._changed.notify()
        return item.future.result()

    def close(self) -> None:
        """Encode what is queued, then stop the worker."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._worker.join(timeout=60)

    def _next_batch(self) -> list[_Item] | None:
        """Wait for a first image, then for company until the window since it arrived ends or the batch is full;
        None once closed and drained."""
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            if not self._waiting:
                return None
            # The window counts from the first image's arrival: images that queued while the previous batch
            # was encoding have waited long enough and go at once.
            deadline = self._waiting[0].queued_at + self.window_s
            while len(self._waiting) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._encode(batch)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch))
                except Exception:  # a metrics failure must not stop the encoder that every match waits on
                    log.exception("on_batch failed")

    def _encode(self, batch: list[_Item]) -> None:
        try:
            vectors = self.embedder.encode([item.image for item in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # One image the encoder cannot take must not fail the requests that happened to share its batch.
            for item in batch:
                self._encode([item])
            return
        for item, vector in zip(batch, vectors):
            item.future.set_result(vector)


class Admission:
    """At most `limit` holders at once; one more raises Overloaded instead of waiting (the API's match
    requests: each holds its uploaded files in memory while it waits for a thread and the encoder)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @contextmanager
    def enter(self) -> Iterator[None]:
        with self._lock:
            if self._held >= self.limit:
                raise Overloaded(f"The server is busy: {self.limit} match requests are already in progress; "
                                 "retry in a moment.")
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1
