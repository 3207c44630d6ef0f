"""Groups of references that show one physical implant: near-identical vectors, or a group id given at
ingestion. Leave-one-out and cross-validation hold out a whole group, so that a copy never vouches for itself."""

from __future__ import annotations

from typing import Sequence

import numpy as np

NEAR_IDENTICAL = 0.99  # cosine similarity at and above which two references count as one implant's images
_CHUNK_ROWS = 2048


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def best_per_row(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's `k` largest entries (k <= columns), largest first; equal
    values by column index, so the result is deterministic."""
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    order = np.lexsort((top, -top_sims), axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sims, order, axis=1)


class _Union:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def groups(vectors: np.ndarray, group_ids: Sequence[str | None] | None = None, *,
           near: float = NEAR_IDENTICAL) -> np.ndarray:
    """A group number per reference (0..G-1, in order of first appearance): references within cosine `near`
    of each other, directly or through a chain, and references sharing a non-empty group id, are one group."""
    x = unit_rows(vectors)
    n = len(x)
    union = _Union(n)
    for start in range(0, n, _CHUNK_ROWS):
        sims = x[start:start + _CHUNK_ROWS] @ x.T
        rows, cols = np.nonzero(sims >= near)
        for a, b in zip(rows + start, cols):
            if a < b:
                union.join(int(a), int(b))
    if group_ids is not None:
        first: dict[str, int] = {}
        for i, gid in enumerate(group_ids):
            if gid:
                union.join(i, first.setdefault(gid, i))
    roots = np.array([union.find(i) for i in range(n)], dtype=np.int64)
    _, numbered = np.unique(roots, return_inverse=True)
    # Renumbered by first appearance, so that the numbers do not depend on the union's internals.
    order = {}
    return np.array([order.setdefault(g, len(order)) for g in numbered], dtype=np.int64)


def grouped_folds(group_of: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """A fold number (0..k-1) per reference, whole groups to a fold, folds about equal in references
    (groups shuffled with `seed`, then each given to the fold that has fewest so far)."""
    sizes = np.bincount(group_of)
    order = np.random.default_rng(seed).permutation(len(sizes))
    fold_of_group = np.empty(len(sizes), dtype=np.int64)
    filled = np.zeros(k, dtype=np.int64)
    for g in order[np.argsort(-sizes[order], kind="stable")]:  # largest groups first: the folds even out
        fold = int(np.argmin(filled))
        fold_of_group[g] = fold
        filled[fold] += sizes[g]
    return fold_of_group[group_of]
