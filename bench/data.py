"""Bench inputs: synthetic radiographs (the real renderer) and synthetic reference vectors with labels.

Vectors come in two kinds, both unit length and 512-d:
- "clustered": what a trained encoder's vectors of implant X-rays look like in outline. Each of 24
  models (8 manufacturers x 3) has a centroid near its manufacturer's; a vector is its model's centroid
  plus variation inside a 32-dimensional subspace of that model (pose, exposure, diameter) plus a little
  isotropic noise. Neighbours are meaningful and HNSW's graph has structure to exploit.
- "uniform": independent random directions, the worst case for any graph index (no structure at all).
- "cone": the hard case of radiograph embeddings: 2,000 small clusters inside a narrow cone (any two
  vectors at cosine ~0.54), each vector's nearest neighbour at cosine ~0.76 and its 10th at ~0.75, so
  the true 10 barely stand out from the next hundred.
- "radiographs": the loaded model's own vectors of rendered synthetic radiographs, and copies of them
  moved off by a random step (cosine ~0.95 to their image's vector, as another X-ray of the same implant).
Queries are fresh draws from the same distribution, never rows of the table.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

DIM = 512
MANUFACTURERS = ("Nobel Biocare", "Straumann", "Neodent", "Zimmer", "Osstem", "MIS", "Dentsply", "BioHorizons")
MODELS_PER_MANUFACTURER = 3
DIAMETERS = (3.5, 4.1, 4.8)
SUBSPACE_DIM = 32


def tiny_references(n: int, seed: int, side: int = 16) -> list[tuple[dict, bytes]]:
    """n reference rows, each with a tiny distinct random image (PNG bytes) under its pixel hash's key: what a
    backup or restore costs per image, not per pixel, and no model needed."""
    from PIL import Image

    from raiox_core.images import _encode_png, _pixel_hash
    from raiox_core.storage import reference_key

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8))
        sha = _pixel_hash(image)
        out.append(({"manufacturer": "Straumann", "model": "BL", "diameter_mm": 4.1, "source_filename": f"t{i}.png",
                     "sha256": sha, "object_key": reference_key(sha), "width": side, "height": side,
                     "source": "synthetic"}, _encode_png(image)))
    return out


def _demo_chunk(seed: int) -> list[tuple[str, bytes]]:
    from raiox_core.synthetic import demo_files

    return demo_files(per_diameter=1, seed=seed)  # one image per catalogue (model, diameter)


def radiographs(n: int, seed: int = 0, workers: int = 2) -> list[tuple[str, bytes]]:
    """n distinct (file name, PNG bytes) synthetic radiographs, named by the MANUFACTURER_MODEL_D convention.

    Rendered in `workers` processes (the renderer is numpy-bound); deterministic for (n, seed).
    """
    from raiox_core.synthetic import CATALOGUE

    per_chunk = sum(len(design.diameters_mm) for design in CATALOGUE)
    seeds = [1000 * seed + i for i in range(-(-n // per_chunk))]
    if workers > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(min(workers, len(seeds))) as pool:
            chunks = list(pool.map(_demo_chunk, seeds))
    else:
        chunks = [_demo_chunk(s) for s in seeds]
    return [item for chunk in chunks for item in chunk][:n]


@dataclass
class Labels:
    """Labels of n references, as parallel arrays."""

    manufacturer: np.ndarray  # index into MANUFACTURERS
    model: np.ndarray  # 0..23: manufacturer * 3 + model number
    diameter: np.ndarray  # mm

    def __len__(self) -> int:
        return len(self.model)

    def rows(self, start_id: int = 1):
        """(id, manufacturer, model, diameter_mm, source_filename, sha256, object_key) tuples for COPY."""
        for i in range(len(self)):
            ref_id = start_id + i
            maker = MANUFACTURERS[self.manufacturer[i]]
            model = f"M{self.model[i] % MODELS_PER_MANUFACTURER + 1}"
            sha = f"{ref_id:064x}"
            yield (ref_id, maker, model, Decimal(f"{self.diameter[i]:.2f}"), f"bench_{ref_id}.png", sha,
                   f"referencia/{sha}.png")


def labels(n: int, seed: int = 0) -> Labels:
    """Uniformly spread labels: each manufacturer holds about n/8 references."""
    rng = np.random.default_rng(seed)
    model = rng.integers(0, len(MANUFACTURERS) * MODELS_PER_MANUFACTURER, n)
    return Labels(model // MODELS_PER_MANUFACTURER, model, rng.choice(DIAMETERS, n))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class ClusterModel:
    """Centroids and per-model subspaces of the "clustered" distribution."""

    centroids: np.ndarray  # (24, DIM) unit
    bases: np.ndarray  # (24, SUBSPACE_DIM, DIM) orthonormal rows

    @classmethod
    def make(cls, seed: int = 0) -> "ClusterModel":
        rng = np.random.default_rng(seed)
        makers = _unit(rng.standard_normal((len(MANUFACTURERS), DIM)))
        n_models = len(MANUFACTURERS) * MODELS_PER_MANUFACTURER
        centroids = _unit(np.repeat(makers, MODELS_PER_MANUFACTURER, axis=0)
                          + 0.7 * _unit(rng.standard_normal((n_models, DIM))))
        bases = np.stack([np.linalg.qr(rng.standard_normal((DIM, SUBSPACE_DIM)))[0].T for _ in range(n_models)])
        return cls(centroids, bases.astype(np.float32))

    def sample(self, model: np.ndarray, seed: int, spread: float = 0.9, noise: float = 0.25) -> np.ndarray:
        """Unit vectors for the given model indices (one row per entry)."""
        rng = np.random.default_rng(seed)
        out = np.empty((len(model), DIM), dtype=np.float32)
        for start in range(0, len(model), 20_000):  # bounded memory at any n
            m = model[start : start + 20_000]
            coeffs = rng.standard_normal((len(m), SUBSPACE_DIM)).astype(np.float32) * (spread / SUBSPACE_DIM**0.5)
            local = np.einsum("nk,nkd->nd", coeffs, self.bases[m])
            iso = rng.standard_normal((len(m), DIM)).astype(np.float32) * (noise / DIM**0.5)
            out[start : start + len(m)] = _unit(self.centroids[m] + local + iso)
        return out


def uniform(n: int, seed: int) -> np.ndarray:
    """n independent random unit vectors."""
    return _unit(np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32))


@dataclass
class Cone:
    """Cluster centres of the "cone" distribution (see the module's docstring)."""

    centres: np.ndarray  # (clusters, DIM) unit

    @classmethod
    def make(cls, seed: int = 0, clusters: int = 2_000, spread: float = 0.6) -> "Cone":
        rng = np.random.default_rng(seed)
        axis = _unit(rng.standard_normal((1, DIM)))
        return cls(_unit(axis + spread * _unit(rng.standard_normal((clusters, DIM)))))

    def sample(self, n: int, seed: int, noise: float = 0.6) -> np.ndarray:
        rng = np.random.default_rng(seed)
        picked = rng.integers(0, len(self.centres), n)
        out = np.empty((n, DIM), dtype=np.float32)
        for start in range(0, n, 20_000):
            m = picked[start : start + 20_000]
            out[start : start + len(m)] = _unit(self.centres[m] + noise * _unit(rng.standard_normal((len(m), DIM))))
        return out


def perturbed_copies(bases: np.ndarray, n: int, seed: int, step: float = 0.33) -> np.ndarray:
    """n unit vectors, each a random base vector moved by a random step of length `step` (cosine ~0.95)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, bases.shape[1]), dtype=np.float32)
    for start in range(0, n, 20_000):
        m = rng.integers(0, len(bases), min(20_000, n - start))
        out[start : start + len(m)] = _unit(bases[m] + step * _unit(rng.standard_normal((len(m), bases.shape[1]))))
    return out
