"""(d) Encoder efficiency: achieved GFLOP/s of the image tower against this machine's dense fp32 matmul.

Variants tried: batch size, thread count, channels-last and int8 dynamic quantisation of the Linear
layers (with its cosine to fp32 and whether batching changes its vectors). A variant is only worth
adopting when it is faster AND its vectors stay within cosine 0.999 of fp32 AND batching does not
change them (tests/core/test_embedder.py holds the encoder to that).
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


def _int8(visual):
    import torch

    with warnings.catch_warnings():  # eager-mode quantisation is deprecated in favour of torchao; still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(visual), {torch.nn.Linear}, dtype=torch.qint8)


def run(embedder, images, min_seconds: float, batch_sizes: tuple[int, ...]) -> dict:
    """Every variant's speed and GFLOP/s; int8's cosine to fp32; the fp32 efficiency the app gets."""
    import torch

    visual = embedder.model.visual
    pixels = embedder.to_tensor(images)
    threads = torch.get_num_threads()
    matmul = matmul_gflops()
    flops = flops_per_image(visual, embedder.image_size)
    out = {"matmul": matmul, "gflop_per_image": round(flops / 1e9, 3), "threads": threads, "variants": {}}

    def record(name: str, result: dict) -> None:
        achieved = flops * result["images_per_s"] / 1e9
        result["gflops"] = round(achieved, 1)
        result["efficiency_vs_matmul"] = round(achieved / matmul["median_gflops"], 3)
        out["variants"][name] = result

    for batch in batch_sizes:
        record(f"fp32 batch {batch}", _throughput(visual, pixels, batch, min_seconds))
    main_batch = 16 if 16 in batch_sizes else max(batch_sizes)
    torch.set_num_threads(1)
    try:
        record(f"fp32 batch {main_batch}, 1 thread", _throughput(visual, pixels, main_batch, min_seconds))
    finally:
        torch.set_num_threads(threads)
    channels_last = copy.deepcopy(visual).to(memory_format=torch.channels_last)
    record(f"fp32 batch {main_batch}, channels-last",
           _throughput(channels_last, pixels.contiguous(memory_format=torch.channels_last), main_batch, min_seconds))
    del channels_last

    quantised = _int8(visual)
    record("int8 dynamic batch 1", _throughput(quantised, pixels, 1, min_seconds))
    record(f"int8 dynamic batch {main_batch}", _throughput(quantised, pixels, main_batch, min_seconds))
    reference = _vectors(visual, pixels, main_batch)
    batched, single = _vectors(quantised, pixels, main_batch), _vectors(quantised, pixels, 1)
    cosines = np.sum(reference * batched, axis=1)
    out["int8"] = {
        "cosine_to_fp32_min": round(float(cosines.min()), 5), "cosine_to_fp32_mean": round(float(cosines.mean()), 5),
        "batch_vs_single_max_abs_diff": round(float(np.abs(batched - single).max()), 6),
        "images": len(pixels), "weights": "trained" if embedder.trained else "untrained (seeded)",
    }
    fp32_batch = out["variants"][f"fp32 batch {main_batch}"]
    int8_batch = out["variants"][f"int8 dynamic batch {main_batch}"]
    out["int8"]["speedup_vs_fp32"] = round(int8_batch["images_per_s"] / fp32_batch["images_per_s"], 2)
    out["int8"]["adoptable"] = bool(out["int8"]["cosine_to_fp32_min"] >= COSINE_FLOOR
                                    and out["int8"]["batch_vs_single_max_abs_diff"] <= 1e-4
                                    and out["int8"]["speedup_vs_fp32"] > 1.05)
    out["onnxruntime"] = _onnxruntime_note()
    out["adopted"] = f"fp32 eager, batch {main_batch}, {threads} threads (what raiox_core.embedder runs)"
    out["gflops"] = fp32_batch["gflops"]
    out["efficiency_vs_matmul"] = fp32_batch["efficiency_vs_matmul"]
    out["single_image_ms"] = out["variants"][f"fp32 batch {min(batch_sizes)}"]["ms_per_image"]
    return out


def _onnxruntime_note() -> str:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "not installed: not measured (see bench/README.md)"
    return "installed but not measured by this bench"
