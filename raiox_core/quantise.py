"""int8 inference for the image tower's matrix products on CPU, one scale per token or patch.

The transformer's matrix products (attention in/out projections and the MLP, ~97% of ViT-B-32's
FLOPs) and the patch embedding (a convolution whose stride is its kernel: one product over the
image's patches) run as fbgemm int8 GEMMs: weights quantised per output channel, activations per row
(token or patch).
fbgemm's dynamic linear picks one activation range for its whole input, which would make an image's
vector depend on the other images in its batch; so each row is first scaled to max |x| = 1 and a guard
row spanning [-1, 1] pins that range. Integer accumulation is exact, so a row's result depends on that
row alone: batched and single encodes agree, and ingestion and matching share one vector space.

The fp32 weights stay in the model (checkpoints, state_dict and the fp32 path are unchanged); the int8
copies are swapped in by replacing the modules' `forward` while active. Whether they are used at all
is decided by `embedder.load_embedder`, which compares them to fp32 on probe images first.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np

REDUCE_RANGE = True  # 7-bit activations: AVX2's u8*s8 pair sums cannot saturate int16


def _pack(weight, bias):
    """fbgemm's packed form of an fp32 (out, in) weight, per-output-channel symmetric int8."""
    import torch

    w = weight.detach().float().contiguous()
    scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
    with warnings.catch_warnings():  # torch marks the quantized tensor API deprecated; it is what fbgemm takes
        warnings.simplefilter("ignore")
        qweight = torch.quantize_per_channel(w, scales, torch.zeros(len(w), dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qweight, None)
    return packed, None if bias is None else bias.detach().float().clone()


class _RowInt8Linear:
    """y = x W^T + b with int8 W and each row of x quantised on its own range."""

    def __init__(self, weight, bias):
        import torch

        self.packed, self.bias = _pack(weight, bias)
        self.guard = torch.linspace(-1.0, 1.0, weight.shape[1])  # spans [-1, 1]: pins fbgemm's range

    @property
    def linears(self) -> tuple:
        return (self,)

    def __call__(self, x):
        import torch

        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12)  # faster than aminmax or an inf-norm
        # shape[0], not len(): a traced tower (raiox_core.ready_encoder) then keeps the batch size variable
        pinned = torch.empty(rows.shape[0] + 1, shape[-1], dtype=rows.dtype)
        torch.div(rows, scale, out=pinned[:-1])
        pinned[-1] = self.guard
        out = torch.ops.quantized.linear_dynamic(pinned, self.packed, REDUCE_RANGE)[:-1]
        out = out.mul_(scale) if self.bias is None else torch.addcmul(self.bias, out, scale)
        return out.reshape(*shape[:-1], out.shape[-1])


def _attention_forward(attn):
    """An int8 replacement for nn.MultiheadAttention.forward, for self-attention as open_clip calls it."""
    import torch.nn.functional as F

    in_proj = _RowInt8Linear(attn.in_proj_weight, attn.in_proj_bias)
    out_proj = _RowInt8Linear(attn.out_proj.weight, attn.out_proj.bias)
    heads, batch_first = attn.num_heads, attn.batch_first

    def forward(query, key=None, value=None, need_weights=False, attn_mask=None, **_):
        if (key is not None and key is not query) or (value is not None and value is not query) or need_weights:
            raise NotImplementedError("the int8 attention handles self-attention without weights only")
        x = query if batch_first else query.transpose(0, 1)
        batch, tokens, width = x.shape
        qkv = in_proj(x).reshape(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        out = out_proj(mixed.transpose(1, 2).reshape(batch, tokens, width))
        return (out if batch_first else out.transpose(0, 1)), None

    forward.linears = (in_proj, out_proj)
    return forward


def _linear_forward(linear):
    return _RowInt8Linear(linear.weight, linear.bias)


def _patch_forward(conv):
    """An int8 replacement for a patch-embedding Conv2d (kernel = stride, no padding), or None.

    Each patch is one row of the product (so one scale per patch); ~2 ms per image less than the fp32
    convolution at batch 16 on the bench machine.
    """
    size, stride = conv.kernel_size, conv.stride
    if size != stride or size[0] != size[1] or conv.padding not in ((0, 0), "valid") or conv.dilation != (1, 1) \
            or conv.groups != 1:
        return None
    linear = _RowInt8Linear(conv.weight.reshape(conv.out_channels, -1), conv.bias)
    side = size[0]

    def forward(x):
        batch, channels, height, width = x.shape  # the model's input side, a multiple of the patch side
        rows, cols = height // side, width // side
        patches = x.reshape(batch, channels, rows, side, cols, side).permute(0, 2, 4, 1, 3, 5)
        out = linear(patches.reshape(batch * rows * cols, channels * side * side))
        return out.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2)  # the convolution's (n, c, h, w) layout

    forward.linears = (linear,)
    return forward


class Int8Tower:
    """The int8 forwards of one open_clip image tower; `active` swaps them in, `fp32()` out again."""

    def __init__(self, visual):
        from torch.nn import Conv2d

        self._forwards = []
        patch = _patch_forward(visual.conv1) if isinstance(getattr(visual, "conv1", None), Conv2d) else None
        if patch is not None:
            self._forwards.append((visual.conv1, patch))
        for block in visual.transformer.resblocks:
            self._forwards.append((block.attn, _attention_forward(block.attn)))
            self._forwards.append((block.mlp.c_fc, _linear_forward(block.mlp.c_fc)))
            self._forwards.append((block.mlp.c_proj, _linear_forward(block.mlp.c_proj)))
        self.active = False

    def packed_weights(self) -> list:
        """fbgemm's packed weights of every int8 forward: a traced tower (raiox_core.ready_encoder) must hold
        them as attributes of a module it traces, or the tracer cannot record the products that use them."""
        return [linear.packed for _, forward in self._forwards for linear in forward.linears]

    def activate(self) -> None:
        for module, forward in self._forwards:
            module.forward = forward  # an instance attribute shadows the class's forward
        self.active = True

    def deactivate(self) -> None:
        for module, _ in self._forwards:
            module.__dict__.pop("forward", None)
        self.active = False

    @contextmanager
    def fp32(self):
        """Run the fp32 weights inside the block (comparisons, the bench)."""
        was = self.active
        self.deactivate()
        try:
            yield
        finally:
            if was:
                self.activate()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between two sets of vectors."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))
