"""(d) Encoder efficiency: achieved GFLOP/s of the image tower against this machine's dense fp32 matmul.

Variants measured: batch size, thread count, channels-last, torch's int8 dynamic quantisation of the Linear
layers, and raiox_core.quantise's per-token int8 (each int8 variant with its cosine to fp32 and whether
batching changes its vectors). A variant is only worth adopting when it is faster AND its vectors stay
within cosine 0.999 of fp32 AND batching does not change them (tests/core/test_embedder.py holds the
encoder to that). GFLOP/s of int8 variants count the fp32 model's FLOPs, so they can exceed the fp32
matmul ceiling.
"""

from __future__ import annotations

import copy
import time
import warnings

import numpy as np

from .timing import summarize

COSINE_FLOOR = 0.999


def matmul_gflops(side: int = 2048, reps: int = 10) -> dict:
    """Dense fp32 matrix product throughput with torch's current thread count (median and best of reps)."""
    import torch

    a, b = torch.randn(side, side), torch.randn(side, side)
    a @ b
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    flops = 2.0 * side**3
    return {"size": side, "threads": torch.get_num_threads(),
            "median_gflops": round(flops / float(np.median(seconds)) / 1e9, 1),
            "best_gflops": round(flops / min(seconds) / 1e9, 1)}


def flops_per_image(visual, side: int) -> float:
    """Floating-point operations of one forward pass of the image tower (matmuls, convs, attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # With autograd on, nn.MultiheadAttention takes its unfused path, whose projections the counter sees
    # (the fused inference kernel would hide a third of the FLOPs).
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        visual(torch.zeros(1, 3, side, side))
    return float(counter.get_total_flops())


def _throughput(fn, pixels, batch: int, min_seconds: float, reps_floor: int = 3) -> dict:
    """Images/s of fn over batches of `batch` images, timed for at least min_seconds after a warm-up."""
    import torch

    x = pixels[:batch]
    with torch.inference_mode():
        fn(x)
        seconds = []
        while sum(seconds) < min_seconds or len(seconds) < reps_floor:
            start = time.perf_counter()
            fn(x)
            seconds.append(time.perf_counter() - start)
    per_image = float(np.median(seconds)) / batch
    return {"batch": batch, "ms_per_image": round(per_image * 1000, 2), "images_per_s": round(1 / per_image, 2),
            "batch_latency": summarize(seconds)}


def _vectors(fn, pixels, batch: int) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch):
            out.append(torch.nn.functional.normalize(fn(pixels[start : start + batch]).float(), dim=-1).numpy())
    return np.concatenate(out)


def _int8_dynamic(visual):
    """torch's own dynamic quantisation of the Linear layers: one activation range per call."""
    import torch

    with warnings.catch_warnings():  # eager-mode quantisation is deprecated in favour of torchao; still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(visual), {torch.nn.Linear}, dtype=torch.qint8)


def _agreement(fn, reference: np.ndarray, pixels, batch: int, fp32_speed: dict, speed: dict) -> dict:
    """An int8 variant against fp32: cosines, whether batching changes its vectors, speed-up, adoptable."""
    batched, single = _vectors(fn, pixels, batch), _vectors(fn, pixels, 1)
    cosines = np.sum(reference * batched, axis=1)
    out = {
        "cosine_to_fp32_min": round(float(cosines.min()), 5), "cosine_to_fp32_mean": round(float(cosines.mean()), 5),
        "batch_vs_single_max_abs_diff": round(float(np.abs(batched - single).max()), 6),
        "speedup_vs_fp32": round(speed["images_per_s"] / fp32_speed["images_per_s"], 2),
    }
    out["adoptable"] = bool(out["cosine_to_fp32_min"] >= COSINE_FLOOR and out["batch_vs_single_max_abs_diff"] <= 1e-4
                            and out["speedup_vs_fp32"] > 1.05)
    return out


def run(embedder, images, min_seconds: float, batch_sizes: tuple[int, ...]) -> dict:
    """Every variant's speed and GFLOP/s; each int8 variant's agreement with fp32; what the app runs."""
    import torch

    from raiox_core.quantise import Int8Tower

    visual = embedder.model.visual
    pixels = embedder.to_tensor(images)
    threads = torch.get_num_threads()
    matmul = matmul_gflops()
    main_batch = 16 if 16 in batch_sizes else max(batch_sizes)
    out = {"matmul": matmul, "threads": threads, "variants": {}, "images": len(pixels),
           "weights": "trained" if embedder.trained else "untrained (seeded)"}

    def record(name: str, result: dict) -> dict:
        achieved = out["flops"] * result["images_per_s"] / 1e9  # fp32-equivalent FLOPs for the int8 variants
        result["gflops"] = round(achieved, 1)
        result["efficiency_vs_matmul"] = round(achieved / matmul["median_gflops"], 3)
        out["variants"][name] = result
        return result

    with embedder.fp32():  # the baseline and its variants; copies are made without the int8 forwards
        out["flops"] = flops_per_image(visual, embedder.image_size)
        for batch in batch_sizes:
            record(f"fp32 batch {batch}", _throughput(visual, pixels, batch, min_seconds))
        torch.set_num_threads(1)
        try:
            record(f"fp32 batch {main_batch}, 1 thread", _throughput(visual, pixels, main_batch, min_seconds))
        finally:
            torch.set_num_threads(threads)
        channels_last = copy.deepcopy(visual).to(memory_format=torch.channels_last)
        record(f"fp32 batch {main_batch}, channels-last",
               _throughput(channels_last, pixels.contiguous(memory_format=torch.channels_last), main_batch, min_seconds))
        del channels_last
        reference = _vectors(visual, pixels, main_batch)
        dynamic = _int8_dynamic(visual)
    fp32_main = out["variants"][f"fp32 batch {main_batch}"]
    record("int8 dynamic batch 1", _throughput(dynamic, pixels, 1, min_seconds))
    speed = record(f"int8 dynamic batch {main_batch}", _throughput(dynamic, pixels, main_batch, min_seconds))
    out["int8_dynamic"] = _agreement(dynamic, reference, pixels, main_batch, fp32_main, speed)
    del dynamic

    # raiox_core.quantise: per-token int8, what the embedder runs when its probe check passed.
    tower = embedder.int8 or Int8Tower(visual)
    was_active = tower.active
    tower.activate()
    try:
        for batch in batch_sizes:
            speed = record(f"int8 per-token batch {batch}", _throughput(visual, pixels, batch, min_seconds))
        speed = out["variants"][f"int8 per-token batch {main_batch}"]
        out["int8"] = _agreement(visual, reference, pixels, main_batch, fp32_main, speed)
    finally:
        if not was_active:
            tower.deactivate()
    out["int8"]["probe_min_cosine"] = embedder.int8_min_cosine

    out["onnxruntime"] = _onnxruntime_note()
    out["gflop_per_image"] = round(out.pop("flops") / 1e9, 3)
    adopted = "int8 per-token" if embedder.precision == "int8" else "fp32"
    out["adopted"] = f"{adopted}, batch {main_batch}, {threads} threads (what raiox_core.embedder runs)"
    adopted_main = out["variants"][f"{adopted} batch {main_batch}"]
    out["gflops"] = adopted_main["gflops"]
    out["efficiency_vs_matmul"] = adopted_main["efficiency_vs_matmul"]
    out["fp32_efficiency_vs_matmul"] = fp32_main["efficiency_vs_matmul"]
    out["single_image_ms"] = out["variants"][f"{adopted} batch {min(batch_sizes)}"]["ms_per_image"]
    return out


def _onnxruntime_note() -> str:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "not installed: not measured (see bench/README.md)"
    return "installed but not measured by this bench"
