"""The match queue on a real untrained encoder: shared batches, unchanged vectors, a bound, errors reach the caller."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from raiox_core.batching import Admission, BatchingEncoder
from raiox_core.embedder import probe_images
from raiox_core.errors import Overloaded


@pytest.fixture(scope="module")
def images():
    return probe_images()[:6]


def _concurrently(encoder: BatchingEncoder, images) -> list[np.ndarray]:
    start = threading.Barrier(len(images))

    def one(image):
        start.wait()
        return encoder.encode_one(image)

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, images))


def test_concurrent_calls_share_a_batch_and_get_their_own_vectors(embedder, images):
    sizes: list[int] = []
    encoder = BatchingEncoder(embedder, window_ms=300, max_batch=16, on_batch=sizes.append)
    try:
        vectors = _concurrently(encoder, images)
    finally:
        encoder.close()
    assert sum(sizes) == len(images) and max(sizes) > 1, sizes
    alone = np.stack([embedder.encode_one(image) for image in images])
    # Per-token int8 (and fp32) vectors do not depend on their batch-mates.
    assert embedder.precision in ("int8", "fp32")
    assert float((np.stack(vectors) * alone).sum(axis=1).min()) >= 0.9999
    assert np.allclose(np.stack(vectors), alone, atol=1e-4)


def test_the_embedder_attributes_pass_through(embedder):
    encoder = BatchingEncoder(embedder, window_ms=0)
    try:
        assert (encoder.embedding_model, encoder.trained, encoder.precision, encoder.dim) == \
               (embedder.embedding_model, embedder.trained, embedder.precision, embedder.dim)
    finally:
        encoder.close()


def test_a_full_queue_raises_overloaded_at_once(embedder, images):
    encoder = BatchingEncoder(embedder, window_ms=600, max_queue=1)  # the first image waits for company
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(encoder.encode_one, images[0])
            deadline = time.monotonic() + 5
            while encoder.waiting < 1:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            with pytest.raises(Overloaded, match="busy"):
                encoder.encode_one(images[1])
            assert first.result(timeout=60).shape == (embedder.dim,)  # the queued one is still answered
    finally:
        encoder.close()
    with pytest.raises(Overloaded, match="shutting down"):
        encoder.encode_one(images[0])


def test_an_encoder_exception_reaches_its_caller_only(embedder, images):
    encoder = BatchingEncoder(embedder, window_ms=300)
    try:
        with ThreadPoolExecutor(2) as pool:
            good = pool.submit(encoder.encode_one, images[0])
            bad = pool.submit(encoder.encode_one, "not an image")  # Embedder.to_tensor cannot convert a str
            with pytest.raises(AttributeError):
                bad.result(timeout=60)
            assert good.result(timeout=60).shape == (embedder.dim,)  # its batch-mate still gets its vector
    finally:
        encoder.close()


def test_admission_refuses_beyond_its_limit_and_frees_on_exit():
    gate = Admission(1)
    with gate.enter():
        with pytest.raises(Overloaded, match="1 match requests"):
            with gate.enter():
                pass
    with pytest.raises(KeyError):
        with gate.enter():  # released after an exception inside too
            raise KeyError("x")
    with gate.enter():
        pass
