"""Explanations of one match: where a query and a reference look alike, and whether that map is faithful.

Two parts, both on the embedder's own preprocessing and forward (fp32 or int8, trained or not):

- the **similarity map**: the image tower's patch tokens, projected into the embedding space exactly as
  its pooled token is (ln_post, then proj), compared patch by patch. Each query patch gets the cosine of
  its best-matching reference patch, and each reference patch that of its best-matching query patch.
  It shows *regions whose patch embeddings are alike*, not why the model ranked the reference where it
  did: the vector that is searched is the pooled token, which mixes all patches.
- the **occlusion check**, on demand: each query patch greyed out in turn (one batched pass), and how much
  the similarity of the pooled vectors drops; plus a **deletion curve**, the similarity as the patches the
  map calls most alike are greyed out first, against random orders (seeded). If the map is faithful to
  the model, the ordered curve falls faster than the random ones and its area is smaller.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import ExplainUnavailable, InvalidInput, StorageError

if TYPE_CHECKING:
    from .db import Database
    from .embedder import Embedder
    from .references import Reference
    from .storage import Storage

MEANING = ("Regions that look alike: each patch's best cosine similarity to the other image's patches, in the "
           "model's embedding space. Not a causal explanation of the match; decision support, not a diagnosis.")
DELETION_STEPS = 7  # points after the start: ViT-B-32's 49 patches go 7 at a time; 8 images per ordering
RANDOM_ORDERS = 3  # random deletion orders averaged: one is too noisy to compare with, each costs 6 images
SEED = 0
OVERLAY_ALPHA = 0.5


# -- results ----------------------------------------------------------------------------------------------


def _grid(values: np.ndarray, digits: int = 4) -> list[list[float]]:
    return [[round(float(v), digits) for v in row] for row in values]


@dataclass(frozen=True)
class SimilarityMap:
    """Patch-to-patch similarity of a query and a reference, on the model's patch grid (7x7 for ViT-B-32)."""

    query: np.ndarray  # (rows, cols) float32 in [-1, 1]: each query patch against its best reference patch
    reference: np.ndarray  # (rows, cols): each reference patch against its best query patch
    pair_cosine: float  # cosine of the two pooled vectors: the match's similarity
    embedding_model: str
    precision: str  # what ran: "int8" or "fp32"
    reference_vector: np.ndarray = field(repr=False)  # pooled unit vector of the reference (the occlusion's target)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.query.shape)

    def to_json(self) -> dict:
        """The map part of `raiox explain --json`."""
        return {
            "embedding_model": self.embedding_model, "precision": self.precision, "grid": list(self.grid),
            "pair_cosine": round(self.pair_cosine, 4),
            "query_mean": round(float(self.query.mean()), 4), "query_max": round(float(self.query.max()), 4),
            "reference_mean": round(float(self.reference.mean()), 4),
            "reference_max": round(float(self.reference.max()), 4),
            "query": _grid(self.query), "reference": _grid(self.reference),
        }


@dataclass(frozen=True)
class DeletionCurve:
    """Similarity to the reference as a share of the query's patches is greyed out (0 to 1 of them)."""

    fractions: np.ndarray  # (steps + 1,) from 0 to 1
    importance: np.ndarray  # the map's most alike patches first; starts at the pair's cosine
    random: np.ndarray  # mean over `random_orders` seeded random orders
    random_orders: int
    seed: int

    @property
    def auc_importance(self) -> float | None:
        return normalised_auc(self.fractions, self.importance)

    @property
    def auc_random(self) -> float | None:
        return normalised_auc(self.fractions, self.random)

    @property
    def faithful(self) -> bool | None:
        """Whether greying out the map's most alike patches first costs more similarity than random orders."""
        a, b = self.auc_importance, self.auc_random
        return None if a is None or b is None else a < b

    @property
    def verdict(self) -> str:
        """The check in one sentence, the same on every door."""
        return {True: "The map is faithful to the model: greying out the patches it calls most alike lowers the "
                      "similarity faster than random orders do (smaller area).",
                False: "The map is not faithful to the model: random orders lower the similarity as fast or faster, "
                       "so do not read it as what the match rests on.",
                None: "Undecided: greying out the whole query does not change the similarity."}[self.faithful]

    def to_json(self) -> dict:
        def rounded(a): return [round(float(v), 4) for v in a]
        auc = (lambda v: None if v is None else round(v, 4))
        return {"fractions": rounded(self.fractions), "importance": rounded(self.importance),
                "random": rounded(self.random), "random_orders": self.random_orders, "seed": self.seed,
                "auc_importance": auc(self.auc_importance), "auc_random": auc(self.auc_random),
                "faithful": self.faithful, "verdict": self.verdict}


@dataclass(frozen=True)
class OcclusionCheck:
    """How much the pair's similarity drops when each query patch is greyed out, and the deletion curve."""

    drops: np.ndarray  # (rows, cols): pair cosine minus the cosine with that patch greyed out
    deletion: DeletionCurve
    images: int  # occluded images encoded (one batched pass)
    rank_correlation: float | None = None  # Spearman, similarity map vs drops: do alike patches matter more?

    def to_json(self) -> dict:
        """The occlusion part of `raiox explain --json`."""
        corr = self.rank_correlation
        return {"drops": _grid(self.drops), "max_drop": round(float(self.drops.max()), 4),
                "mean_drop": round(float(self.drops.mean()), 4), "images": self.images,
                "map_drop_rank_correlation": None if corr is None else round(corr, 4),
                "deletion": self.deletion.to_json()}


@dataclass(frozen=True)
class Explanation:
    """A query explained against one stored reference: `raiox explain`'s result."""

    file: str
    reference: "Reference"
    map: SimilarityMap
    occlusion: OcclusionCheck | None = None

    def to_json(self) -> dict:
        """The stable shape documented in the README for `raiox explain --json`."""
        r = self.reference
        return {"file": self.file, "meaning": MEANING,
                "reference": {"id": r.id, "manufacturer": r.manufacturer, "model": r.model,
                              "diameter_mm": r.diameter_mm, "source_filename": r.source_filename},
                "map": self.map.to_json(),
                "occlusion": None if self.occlusion is None else self.occlusion.to_json()}


def format_auc(value: float | None) -> str:
    """A deletion area for reading: three decimals, or n/a when there was nothing to lose."""
    return "n/a" if value is None else f"{value:.3f}"


def normalised_auc(fractions: np.ndarray, curve: np.ndarray) -> float | None:
    """Area under a deletion curve rescaled so that its start is 1 and its end (everything greyed) is 0.

    1 would mean nothing was lost until the last patch went, 0 that everything was lost at once; a
    straight fall gives 0.5. Both orderings share their start and end (the same two images), so their
    areas compare directly. None when start and end are the same similarity (nothing to lose).
    """
    start, end = float(curve[0]), float(curve[-1])
    if abs(start - end) < 1e-6:
        return None
    y = (np.asarray(curve, dtype=np.float64) - end) / (start - end)
    x = np.asarray(fractions, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


# -- the model's patch tokens -----------------------------------------------------------------------------


def _visual(embedder: "Embedder"):
    """The image tower, if its patch tokens can be read as the embedding's own space; else ExplainUnavailable."""
    visual = embedder.model.visual
    # A ViT with a class token or average pooling: a patch token goes through the same ln_post and proj as the
    # pooled one. An attention pooler's outputs are not patches, and a ResNet has no tokens at all.
    if not all(hasattr(visual, a) for a in ("_embeds", "_pool", "transformer", "ln_post", "grid_size")) \
            or getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        raise ExplainUnavailable(f"Similarity maps need a ViT image tower with patch tokens; "
                                 f"{embedder.embedding_model} has none.")
    return visual


def encode_with_patches(embedder: "Embedder", pixels) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) pooled and (n, rows * cols, dim) patch unit vectors of a preprocessed (n, 3, side, side) batch.

    The tower's own forward, step by step (`VisionTransformer.forward` is _embeds, transformer, _pool, proj),
    so the pooled vectors are the ones `Embedder.encode` gives and int8, when active, runs here too. Nothing
    is set on the shared model (no hook, no `output_tokens`): other sessions encode with it meanwhile.
    """
    import torch

    visual = _visual(embedder)
    with torch.inference_mode():
        x = visual.transformer(visual._embeds(pixels))
        pooled, tokens = visual._pool(x)
        if getattr(visual, "final_ln_after_pool", False):  # _pool then normalised only the pooled token
            tokens = visual.ln_post(tokens)
        if visual.proj is not None:
            pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        tokens = torch.nn.functional.normalize(tokens.float(), dim=-1)
    return pooled.cpu().numpy(), tokens.cpu().numpy()


def similarity_map(query: Image.Image, reference: Image.Image, embedder: "Embedder") -> SimilarityMap:
    """The similarity map of a (normalised) query and a reference image: one batched forward of both."""
    rows, cols = _visual(embedder).grid_size
    pooled, tokens = encode_with_patches(embedder, embedder.to_tensor([query, reference]))
    alike = tokens[0] @ tokens[1].T  # (query patches, reference patches)
    clip = (lambda a: np.clip(a, -1.0, 1.0).astype(np.float32).reshape(rows, cols))
    return SimilarityMap(query=clip(alike.max(axis=1)), reference=clip(alike.max(axis=0)),
                         pair_cosine=float(np.clip(pooled[0] @ pooled[1], -1.0, 1.0)),
                         embedding_model=embedder.embedding_model, precision=embedder.precision,
                         reference_vector=pooled[1])


# -- occlusion ----------------------------------------------------------------------------------------------


def _grey_value(pixels, embedder: "Embedder") -> float:
    """The query's mean grey level, as the model's input: a radiograph's background is dark, so a fixed
    mid-grey square would add a bright edge that the model sees as structure of its own."""
    gray = pixels[0, 0] * float(embedder.std[0]) + float(embedder.mean[0])  # all channels carry the same grey
    return float(gray.mean())


def occluded(pixels, embedder: "Embedder", masks: np.ndarray):
    """A batch of copies of one preprocessed query (1, 3, side, side), each with its masked patches greyed.

    `masks` is (n, rows, cols) bool: True where the patch is greyed out.
    """
    import torch

    visual = _visual(embedder)
    ph, pw = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
    grey = _grey_value(pixels, embedder)
    fill = torch.as_tensor((grey - embedder.mean) / embedder.std, dtype=pixels.dtype).reshape(1, 3, 1, 1)
    batch = pixels.repeat(len(masks), 1, 1, 1)
    # One pixel mask per image from the patch mask: repeated over each patch's pixels, then blended in.
    keep = torch.from_numpy(~masks).to(pixels.device)
    keep = keep.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)[:, None].to(pixels.dtype)
    return batch * keep + fill * (1 - keep)


def deletion_orders(importance: np.ndarray, random_orders: int = RANDOM_ORDERS, seed: int = SEED) -> np.ndarray:
    """(1 + random_orders, patches) patch indices: the map's most alike first, then seeded random permutations."""
    flat = np.asarray(importance, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    by_map = np.argsort(-flat, kind="stable")
    return np.stack([by_map, *(rng.permutation(len(flat)) for _ in range(random_orders))])


def occlusion_check(query: Image.Image, explained: SimilarityMap, embedder: "Embedder", *,
                    steps: int = DELETION_STEPS, random_orders: int = RANDOM_ORDERS, seed: int = SEED,
                    batch_size: int = 16) -> OcclusionCheck:
    """Grey out each query patch in turn, and the map's most alike patches first; encode all in one pass.

    Similarities are to the reference's pooled vector from `explained`, so nothing of the reference is
    encoded again. `batch_size` only splits the pass: every image's vector is its own (int8 scales per row).
    """
    if steps < 1 or random_orders < 1:
        raise InvalidInput("The deletion curve needs at least one step and one random order.")
    rows, cols = explained.grid
    n = rows * cols
    singles = np.zeros((n, rows, cols), dtype=bool)
    singles.reshape(n, n)[np.arange(n), np.arange(n)] = True
    counts = np.unique(np.round(np.linspace(0, n, steps + 1)).astype(int))  # 0 .. n patches greyed
    orders = deletion_orders(explained.query, random_orders, seed)
    inner = counts[1:-1]
    curves = np.zeros((len(orders), len(inner), rows, cols), dtype=bool)
    for o, order in enumerate(orders):
        for c, count in enumerate(inner):
            curves[o, c].reshape(n)[order[:count]] = True
    masks = np.concatenate([singles, curves.reshape(-1, rows, cols), np.ones((1, rows, cols), dtype=bool)])
    pixels = embedder.to_tensor([query])
    vectors = embedder.encode_tensor(occluded(pixels, embedder, masks), batch_size=batch_size)
    cosines = vectors @ explained.reference_vector
    start, everything = explained.pair_cosine, float(cosines[-1])
    inner_cos = cosines[n:-1].reshape(len(orders), len(inner))
    full = np.concatenate([np.full((len(orders), 1), start), inner_cos, np.full((len(orders), 1), everything)], axis=1)
    drops = (start - cosines[:n]).reshape(rows, cols).astype(np.float32)
    curve = DeletionCurve(fractions=counts / n, importance=full[0], random=full[1:].mean(axis=0),
                          random_orders=random_orders, seed=seed)
    return OcclusionCheck(drops=drops, deletion=curve, images=len(masks),
                          rank_correlation=_spearman(explained.query.ravel(), drops.ravel()))


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


# -- a stored reference -------------------------------------------------------------------------------------


def reference_image(storage: "Storage", reference: "Reference") -> Image.Image:
    """The stored, normalised image of a reference (the pixels its vector was computed from)."""
    data = storage.get(reference.object_key)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("L")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise StorageError(f"The stored image of reference #{reference.id} cannot be read; `raiox doctor` "
                           "checks the stored images.") from None


def explain_reference(query: Image.Image, reference_id: int, *, db: "Database", storage: "Storage",
                      embedder: "Embedder | Callable[[], Embedder]", occlusion: bool = False,
                      file: str = "") -> tuple[Explanation, Image.Image]:
    """The similarity map (and, with `occlusion`, the occlusion check) of a query against stored reference #id.

    Returns the explanation and the reference's image (for drawing). NotFound for an unknown id, before
    `embedder` is called when it is a callable (the CLI's loads the model on first use).
    """
    from .references import get

    reference = get(db, reference_id)
    image = reference_image(storage, reference)
    embedder = embedder() if callable(embedder) else embedder
    explained = similarity_map(query, image, embedder)
    check = occlusion_check(query, explained, embedder) if occlusion else None
    return Explanation(file=file, reference=reference, map=explained, occlusion=check), image


# -- drawing -----------------------------------------------------------------------------------------------

# A perceptually ordered dark-to-bright scale (anchors of matplotlib's "inferno"), without matplotlib.
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                     [250, 193, 39], [252, 255, 164]], dtype=np.float64)
COLOURS = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                    for c in range(3)], axis=1).astype(np.uint8)  # (256, 3)


def colour_range(*maps: np.ndarray) -> tuple[float, float]:
    """The shared colour scale of maps drawn side by side: their joint min and max (never an empty range)."""
    low = float(min(m.min() for m in maps))
    high = float(max(m.max() for m in maps))
    return (low, high) if high - low > 1e-6 else (low - 0.5e-3, high + 0.5e-3)


def overlay(image: Image.Image, grid: np.ndarray, value_range: tuple[float, float], side: int = 320,
            alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The image (grey) with the patch grid upsampled (bilinear) and blended in as colour; RGB, side x side."""
    gray = image.convert("L").resize((side, side), Image.Resampling.BICUBIC)
    low, high = value_range
    scaled = np.clip((np.asarray(grid, dtype=np.float32) - low) / (high - low), 0.0, 1.0)
    smooth = np.asarray(Image.fromarray(scaled, mode="F").resize((side, side), Image.Resampling.BILINEAR))
    colour = COLOURS[np.clip(np.round(smooth * 255), 0, 255).astype(np.uint8)].astype(np.float32)
    base = np.asarray(gray, dtype=np.float32)[..., None]
    return Image.fromarray(np.round(base * (1 - alpha) + colour * alpha).astype(np.uint8), mode="RGB")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _colour_bar(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], value_range, title: str, font) -> None:
    left, top, right, bottom = box
    width = right - left
    for x in range(width):
        draw.line([(left + x, top), (left + x, bottom)], fill=tuple(int(c) for c in COLOURS[x * 255 // max(1, width - 1)]))
    draw.text((left, bottom + 4), f"{value_range[0]:.3f}", fill="black", font=font)
    draw.text((right, bottom + 4), f"{value_range[1]:.3f}", fill="black", font=font, anchor="ra")
    draw.text((left, top - 4), title, fill="black", font=font, anchor="ld")


def figure(query: Image.Image, reference: Image.Image, explanation: Explanation, side: int = 320) -> Image.Image:
    """Query and reference side by side with the similarity map (and the occlusion drops, when checked),
    a shared colour bar with the legend "regions that look alike", and the figures in words."""
    from .text import printable

    m, check = explanation.map, explanation.occlusion
    panels = [(overlay(query, m.query, colour_range(m.query, m.reference), side), "Query"),
              (overlay(reference, m.reference, colour_range(m.query, m.reference), side),
               printable(f"Reference #{explanation.reference.id}: {explanation.reference.label} "
                         f"{explanation.reference.diameter_mm:g} mm"))]
    if check is not None:
        panels.append((overlay(query, check.drops, colour_range(check.drops), side), "Query: similarity drop, occluded"))
    pad, head, foot = 16, 28, 120
    canvas = Image.new("RGB", (pad + len(panels) * (side + pad), head + side + foot), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(12)
    for i, (panel, caption) in enumerate(panels):
        x = pad + i * (side + pad)
        canvas.paste(panel, (x, head))
        draw.text((x, head - 6), caption[:48], fill="black", font=font, anchor="ld")
    bar_top = head + side + 30
    _colour_bar(draw, (pad, bar_top, pad + 2 * side + pad, bar_top + 12), colour_range(m.query, m.reference),
                "regions that look alike (patch cosine similarity)", small)
    if check is not None:
        x = pad + 2 * (side + pad)
        _colour_bar(draw, (x, bar_top, x + side, bar_top + 12), colour_range(check.drops),
                    "similarity drop when greyed out", small)
    lines = [f"pair cosine {m.pair_cosine:.4f}; map mean {m.query.mean():.3f}, max {m.query.max():.3f} "
             f"({m.embedding_model}, {m.precision})"]
    if check is not None:
        d = check.deletion
        lines.append(f"deletion AUC {format_auc(d.auc_importance)} (map order) vs {format_auc(d.auc_random)} (random)")
        lines.append(d.verdict)
    lines.append("Not a causal explanation; decision support, not a diagnosis.")
    for i, line in enumerate(lines):
        draw.text((pad, bar_top + 36 + 16 * i), printable(line), fill="black", font=small)
    return canvas


def figure_png(query: Image.Image, reference: Image.Image, explanation: Explanation) -> bytes:
    buf = io.BytesIO()
    figure(query, reference, explanation).save(buf, format="PNG")
    return buf.getvalue()
