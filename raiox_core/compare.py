"""Query-side pixel work for the match page: straighten and crop a query, and compare it with a reference."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from .errors import ImageRejected
from .images import MIN_SIDE, ImageLimits, PreparedImage, prepare_image

FULL_FRAME = (0.0, 0.0, 1.0, 1.0)  # crop box (left, top, right, bottom) as fractions of the width and height
SSIM_WINDOW = 7  # scikit-image's default window side; smaller only for tiny images


@dataclass(frozen=True)
class Comparison:
    """How alike two grayscale images are, at the query's size."""

    ssim: float  # structural similarity, 1.0 for identical images
    diff: np.ndarray  # |query - reference| per pixel, uint8 0..255, shape (height, width) of the query


def adjust(
    prepared: PreparedImage,
    rotate_deg: float = 0.0,
    crop_box: tuple[float, float, float, float] = FULL_FRAME,
    *,
    limits: ImageLimits,
) -> PreparedImage:
    """Rotate (clockwise, degrees) then crop a prepared query, and normalise the result again.

    The crop box is (left, top, right, bottom) in fractions of the rotated image, so it matches what
    the user sees after rotating. Re-normalising stretches the contrast over the kept region (the
    implant, not the whole jaw) and pads it square, exactly as any other query. With no rotation and
    the full frame, `prepared` itself is returned, so an unadjusted upload hashes and embeds as is.
    Raises ImageRejected when the crop keeps too little.
    """
    left, top, right, bottom = (float(v) for v in crop_box)
    if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
        raise ImageRejected("The crop must keep part of the image: each end must lie after its start.")
    angle = float(rotate_deg) % 360.0
    if angle == 0.0 and (left, top, right, bottom) == FULL_FRAME:
        return prepared
    # PIL turns counter-clockwise; quarter turns are exact transposes inside Image.rotate.
    image = prepared.image.rotate(-angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=0)
    box = (round(left * image.width), round(top * image.height), round(right * image.width), round(bottom * image.height))
    width, height = box[2] - box[0], box[3] - box[1]
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(
            f"The crop keeps {width}x{height} pixels; keep at least {MIN_SIDE} pixels on each side."
        )
    image = image.crop(box)
    # Through prepare_image, so the adjusted query obeys the same checks, normalisation and hashing.
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return replace(prepare_image(buf.getvalue(), limits), source_format=prepared.source_format)


def compare(query: Image.Image, reference: Image.Image) -> Comparison:
    """SSIM and absolute difference of two images as grayscale, the reference resized to the query's size."""
    q = query.convert("L")
    r = reference.convert("L")
    if r.size != q.size:
        r = r.resize(q.size, Image.Resampling.LANCZOS)
    a = np.asarray(q)
    b = np.asarray(r)
    window = min(SSIM_WINDOW, *a.shape)
    window -= 1 - window % 2  # odd, as scikit-image requires
    if window < 3:
        raise ImageRejected(f"Images of {q.width}x{q.height} pixels are too small to compare.")
    ssim = float(structural_similarity(a, b, data_range=255, win_size=window))
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.uint8)
    return Comparison(ssim=ssim, diff=diff)
