"""OpenCLIP image embeddings: load once per process, encode in batches, L2-normalised float32."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from . import int8_verdicts, ready_encoder
from .errors import ModelLoadError

log = logging.getLogger(__name__)
UNTRAINED = "none"
UNTRAINED_SEED = 0  # untrained weights are reproducible across processes, so their vectors stay comparable
PRECISIONS = ("auto", "fp32")
INT8_MIN_COSINE = 0.999  # int8 is used only when every probe vector stays this close to its fp32 vector
INT8_CHECK_VERSION = 1  # bump when the check itself (probe_images, _probe_int8) changes: cached verdicts expire
HUB_HOST = ("huggingface.co", 443)


@dataclass
class Embedder:
    """A loaded image tower with the facts needed to use and label its vectors."""

    model: object  # open_clip CLIP model in eval mode
    embedding_model: str  # e.g. "ViT-B-32/laion2b_s34b_b79k" or "ViT-B-32/untrained"
    dim: int
    image_size: int
    mean: np.ndarray
    std: np.ndarray
    device: str
    trained: bool
    int8: object = field(default=None, repr=False)  # quantise.Int8Tower when it passed the probe check
    int8_min_cosine: float | None = None  # worst probe cosine int8 vs fp32, when int8 was checked
    traced_precision: str | None = None  # a ready-made tower's (ready_encoder): it runs only what it was traced with

    @property
    def precision(self) -> str:
        """What encode runs: "int8" (per-token int8 matmuls, see raiox_core.quantise) or "fp32"."""
        if self.traced_precision is not None:
            return self.traced_precision
        return "int8" if self.int8 is not None and self.int8.active else "fp32"

    def fp32(self):
        """A context in which encode runs the fp32 weights (comparisons and the bench; not thread-safe)."""
        if self.traced_precision == "int8":
            raise RuntimeError("a ready-made int8 encoder has no fp32 path: load it without ready_made")
        return self.int8.fp32() if self.int8 is not None else nullcontext()

    def to_tensor(self, images: Sequence[Image.Image]):
        """Resize to the model's input and normalise; grayscale goes to all three channels.

        Pure numpy/PIL work that releases the GIL for most of its time: ingestion runs it in a worker
        thread for the next batch while the model encodes the current one.
        """
        import torch

        side = self.image_size
        arrays = [np.asarray(im.convert("L").resize((side, side), Image.BICUBIC), dtype=np.float32) for im in images]
        batch = np.stack(arrays)[:, None, :, :] / 255.0  # (n, 1, h, w)
        batch = (batch - self.mean[None, :, None, None]) / self.std[None, :, None, None]  # (n, 3, h, w)
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def encode_tensor(self, pixels, batch_size: int = 16) -> np.ndarray:
        """(n, dim) float32 unit vectors of an already preprocessed (n, 3, side, side) tensor (see to_tensor)."""
        import torch

        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(pixels), batch_size):
                features = self.model.encode_image(pixels[start : start + batch_size]).float()
                features = torch.nn.functional.normalize(features, dim=-1)
                out[start : start + len(features)] = features.cpu().numpy()
        return out

    def encode(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
        """(n, dim) float32 unit vectors, one per image."""
        if not len(images):
            return np.empty((0, self.dim), dtype=np.float32)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):  # preprocess per chunk: memory stays bounded
            chunk = images[start : start + batch_size]
            out[start : start + len(chunk)] = self.encode_tensor(self.to_tensor(chunk), batch_size)
        return out

    def encode_one(self, image: Image.Image) -> np.ndarray:
        return self.encode([image])[0]

    def stored_vectors(self, pixels, batch_size: int = 16) -> dict[str, np.ndarray]:
        """embedding model -> (n, dim) vectors to store for each image of a preprocessed tensor (an adapted
        embedder, raiox_core.adapter, gives its base vectors too)."""
        return {self.embedding_model: self.encode_tensor(pixels, batch_size)}

    def stored_models(self) -> list[str]:
        """The embedding models stored_vectors gives vectors of."""
        return [self.embedding_model]


def embedding_model_for(model: str, pretrained: str, digest: str | None = None) -> str:
    """The label stored with each vector; a checkpoint is named by its file name and content hash.

    `digest`: the checkpoint's SHA-256 when the caller has it already (hashing a checkpoint takes a while).
    """
    if pretrained.lower() == UNTRAINED:
        return f"{model}/untrained"
    path = Path(pretrained).expanduser()
    if path.is_file():
        return f"{model}/file:{path.name}@{(digest or _file_digest(path))[:12]}"
    return f"{model}/{pretrained}"


def _weights_identity(model: str, pretrained: str, digest: str | None) -> str:
    """The weights exactly, for the int8 check's cache: a checkpoint by its whole digest, untrained by its seed."""
    if pretrained.lower() == UNTRAINED:
        return f"{model}/untrained seed {UNTRAINED_SEED}"
    return f"{model}/file sha256:{digest}" if digest else f"{model}/{pretrained}"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("RAIOX_DEVICE is cuda but no CUDA GPU is available; use auto or cpu.")
    return device


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def _check_weights_available(model: str, tag: str) -> None:
    """Fail within seconds, not after a minute of retries, when a tag's weights cannot be had."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = [t for m, t in open_clip.list_pretrained() if m == model]
        tags = ", ".join(tags[:6]) + (", …" if len(tags) > 6 else "") if tags else "none known"
        raise ModelLoadError(f"Unknown pretrained tag {tag!r} for {model}; known tags: {tags}.")
    repo_id = cfg.get("hf_hub", "").rstrip("/")
    if repo_id:
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo_id, name), str):
                return
    if not _hub_reachable():
        raise ModelLoadError(
            f"The {model} weights {tag!r} are not cached and huggingface.co cannot be reached; set "
            "RAIOX_PRETRAINED to a local checkpoint file, copy a Hugging Face cache from a connected machine "
            "into ~/.cache/huggingface, or use RAIOX_PRETRAINED=none for untrained weights (demo only)."
        )


# Kept when the text tower is dropped: the image tower and the (tiny) similarity scale.
_IMAGE_SIDE = ("visual", "logit_scale", "logit_bias")


def _drop_text_tower(clip) -> None:
    """Free the text tower (about 250 MB of ViT-B-32's 600 MB): Raiox only ever embeds images.

    What stays is the image tower, so `state_dict()` is an image-only checkpoint that load_embedder
    accepts as a weights file too.
    """
    for name in list(clip._modules):
        if name not in _IMAGE_SIDE:
            setattr(clip, name, None)
    for table in (clip._parameters, clip._buffers):
        for name in list(table):
            if name not in _IMAGE_SIDE:
                table[name] = None


def _load_image_checkpoint(clip, path: Path) -> None:
    """open_clip's checkpoint loader (format conversions included), strict about the image tower only.

    A full CLIP checkpoint and an image-only one (saved from a loaded Embedder's model) both load;
    any missing image-tower weight or unknown key is still an error.
    """
    import open_clip

    incompatible = open_clip.load_checkpoint(clip, str(path), strict=False)
    missing = [k for k in incompatible.missing_keys if k.startswith("visual.")]
    if missing or incompatible.unexpected_keys:
        keys = (missing or incompatible.unexpected_keys)[:3]
        raise RuntimeError(f"the checkpoint does not fit the model ({'missing' if missing else 'unexpected'} keys "
                           f"{', '.join(keys)})")


def probe_images() -> list[Image.Image]:
    """One normalised synthetic radiograph per catalogue design: what the int8 check compares on."""
    from .images import normalise
    from .synthetic import CATALOGUE, render

    return [normalise(render(d, d.diameters_mm[0], seed=i, side=224)) for i, d in enumerate(CATALOGUE)]


def _probe_int8(embedder: Embedder, tower) -> int8_verdicts.Verdict:
    """Encode the probe images in fp32 and in int8 (`tower`, left inactive) and compare (~5 s on 2 cores)."""
    from .quantise import min_cosine

    probes = probe_images()
    reference = embedder.encode(probes)
    tower.activate()
    try:
        worst = min_cosine(reference, embedder.encode(probes))
    finally:
        tower.deactivate()
    return int8_verdicts.Verdict(worst >= INT8_MIN_COSINE, worst)


def _try_int8(embedder: Embedder, cache_dir: Path | None = None, weights: str | None = None) -> None:
    """Switch to int8 matmuls where fbgemm runs them and the probe vectors stay within INT8_MIN_COSINE.

    Checked per set of weights: trained weights can have activation outliers that untrained ones lack, so a
    pass on one set says nothing about another. With `cache_dir` (and `weights`, their exact identity) the
    verdict is kept there per weights, CPU and code (int8_verdicts), and a later load reuses it.
    """
    import torch

    from .quantise import Int8Tower

    if embedder.device != "cpu" or "fbgemm" not in torch.backends.quantized.supported_engines:
        return
    if not hasattr(embedder.model.visual, "transformer"):  # the int8 forwards are a ViT's (not RN50's): fp32
        log.info("%s has no transformer image tower: encoding in fp32.", embedder.embedding_model)
        return
    key = None if cache_dir is None or weights is None else \
        int8_verdicts.check_key(weights, INT8_MIN_COSINE, INT8_CHECK_VERSION)
    verdict = None if key is None else int8_verdicts.read(cache_dir, key)
    tower = None
    if verdict is None:
        tower = Int8Tower(embedder.model.visual)
        verdict = _probe_int8(embedder, tower)
        if key is not None:
            int8_verdicts.write(cache_dir, key, verdict)
    embedder.int8_min_cosine = verdict.min_cosine
    if verdict.passed:
        embedder.int8 = tower or Int8Tower(embedder.model.visual)
        embedder.int8.activate()
    else:
        log.warning("int8 vectors of %s stay only within cosine %.5f of fp32 (< %s): encoding in fp32.",
                    embedder.embedding_model, embedder.int8_min_cosine, INT8_MIN_COSINE)


# The text tower an untrained model is built with: open_clip builds the image tower first, so its seeded
# weights come out the same whatever follows, and a full text tower would cost ~1 s of random init only
# for _drop_text_tower to free it.
_TINY_TEXT = {"context_length": 1, "vocab_size": 1, "width": 8, "heads": 1, "layers": 1}


def _untrained_create_kwargs(model: str) -> dict:
    """create_model's overrides for an untrained `model`: the tiny text tower where the image tower comes first."""
    import open_clip

    config = open_clip.get_model_config(model) or {}
    if "multimodal_cfg" in config or "hf_model_name" in config.get("text_cfg", {}):
        return {}  # CoCa and Hugging Face text towers: built as they are
    return {"text_cfg": dict(_TINY_TEXT)}


def _ready_key(model: str, pretrained: str, precision: str, digest: str | None) -> dict:
    weights = _weights_identity(model, pretrained, digest)
    return ready_encoder.key(int8_verdicts.check_key(weights, INT8_MIN_COSINE, INT8_CHECK_VERSION), precision)


def _load_ready(model: str, pretrained: str, precision: str, cache_dir: Path) -> Embedder | None:
    """The stored ready-made tower of these weights (ready_encoder), or None: then the full load follows."""
    path = Path(pretrained).expanduser()
    from_file = pretrained.lower() != UNTRAINED and path.is_file()  # as the full load decides
    digest = _file_digest(path) if from_file else None
    found = ready_encoder.load(cache_dir, _ready_key(model, pretrained, precision, digest))
    if found is None:
        return None
    tower, facts = found
    if not facts["trained"]:
        log.warning("Raiox is using UNTRAINED %s weights: matches are not meaningful.", model)
    return Embedder(tower, facts["embedding_model"], facts["dim"], facts["image_size"],
                    np.asarray(facts["mean"], dtype=np.float32), np.asarray(facts["std"], dtype=np.float32), "cpu",
                    facts["trained"], int8_min_cosine=facts["int8_min_cosine"], traced_precision=facts["precision"])


def _save_ready(embedder: Embedder, precision: str, cache_dir: Path, digest: str | None,
                model: str, pretrained: str) -> None:
    """Store the loaded tower for later one-off loads (ready_encoder), checked on two probe images."""
    pixels = embedder.to_tensor(probe_images()[:2])
    facts = {"embedding_model": embedder.embedding_model, "dim": embedder.dim, "image_size": embedder.image_size,
             "mean": embedder.mean.tolist(), "std": embedder.std.tolist(), "trained": embedder.trained,
             "precision": embedder.precision, "int8_min_cosine": embedder.int8_min_cosine}
    packed = embedder.int8.packed_weights() if embedder.precision == "int8" else []
    ready_encoder.save(cache_dir, _ready_key(model, pretrained, precision, digest), embedder.model.visual, packed,
                       pixels, facts)


def load_embedder(model: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k", device: str = "auto",
                  precision: str = "auto", cache_dir: Path | None = None, ready_made: bool = False) -> Embedder:
    """Create the OpenCLIP model once; the caller caches it (the app with st.cache_resource).

    precision "auto" encodes with int8 matmuls on CPU when they pass the probe check (see _try_int8),
    "fp32" always in fp32. `cache_dir`: where the probe check's verdict is kept for later loads (None: the
    check runs at every load). `ready_made` (with a cache_dir, on CPU): an encoder that only encodes will do,
    so the tower stored by an earlier such load is used when there is one (ready_encoder: no open_clip import,
    no model construction), and one is stored after a full load; its vectors are the full model's.
    """
    import torch

    if precision not in PRECISIONS:
        raise ModelLoadError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    device = _resolve_device(device)
    ready_made = ready_made and cache_dir is not None and device == "cpu"
    if ready_made and (found := _load_ready(model, pretrained, precision, cache_dir)) is not None:
        return found
    import open_clip

    if model not in open_clip.list_models():
        raise ModelLoadError(f"Unknown OpenCLIP model {model!r}; see open_clip.list_models() for the names.")
    trained = pretrained.lower() != UNTRAINED
    path = Path(pretrained).expanduser()
    if trained and not path.is_file():
        if os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
            raise ModelLoadError(f"The checkpoint file {pretrained} does not exist.")
        _check_weights_available(model, pretrained)
    from_file = trained and path.is_file()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)
            clip = open_clip.create_model(model, pretrained=pretrained if trained and not from_file else None,
                                          device=device, **({} if trained else _untrained_create_kwargs(model)))
        if from_file:
            _load_image_checkpoint(clip, path)
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:  # a bad file too
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"Could not load {model} weights from {pretrained}: {first}") from None
    digest = _file_digest(path) if from_file else None  # after the load: a file that fails is not hashed here
    _drop_text_tower(clip)
    clip.eval()
    visual = clip.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    mean = np.asarray(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN, dtype=np.float32)
    std = np.asarray(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD, dtype=np.float32)
    dim = int(visual.output_dim)
    if not trained:
        log.warning("Raiox is using UNTRAINED %s weights: matches are not meaningful.", model)
    embedder = Embedder(clip, embedding_model_for(model, pretrained, digest), dim, size, mean, std, device, trained)
    if precision == "auto":
        _try_int8(embedder, cache_dir, _weights_identity(model, pretrained, digest))
    if ready_made:
        _save_ready(embedder, precision, cache_dir, digest, model, pretrained)
    return embedder


def load_from_settings(settings, ready_made: bool = False) -> Embedder:
    """load_embedder with the configured model, weights, device and precision, caching in the cache dir."""
    return load_embedder(settings.model, settings.pretrained, settings.device, settings.precision,
                         settings.effective_cache_dir, ready_made)
