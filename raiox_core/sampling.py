"""Stratified samples of the references: every class kept, the large ones cut down to a common size."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def stratified_sample(classes: Sequence[str], cap: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most `cap` rows: each class keeps min(its size, c) rows, c the largest
    per-class size that fits, so small classes are kept whole and only the large ones are sampled
    (a proportional sample would drop the rare models a researcher looks for). All rows when they fit.
    Deterministic for a seed.
    """
    n = len(classes)
    if n <= cap:
        return np.arange(n)
    names, codes = np.unique(np.asarray(classes, dtype=object).astype(str), return_inverse=True)
    sizes = np.bincount(codes, minlength=len(names))
    low, high = 0, int(sizes.max())  # the largest c with sum(min(sizes, c)) <= cap
    while low < high:
        mid = (low + high + 1) // 2
        if np.minimum(sizes, mid).sum() <= cap:
            low = mid
        else:
            high = mid - 1
    low = max(low, 1)  # more classes than cap: one row each, the cap cannot hold
    rng = np.random.default_rng(seed)
    keep = []
    for code in range(len(names)):
        rows = np.flatnonzero(codes == code)
        keep.append(rows if len(rows) <= low else rng.choice(rows, low, replace=False))
    return np.sort(np.concatenate(keep))
