"""raiox_core.compare: adjusting a query (rotate, crop, re-normalise) and comparing it with a reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raiox_core.compare import FULL_FRAME, Comparison, adjust, compare
from raiox_core.errors import ImageRejected
from raiox_core.images import ImageLimits, MIN_SIDE, normalise, prepare_image


def picture(width: int = 200, height: int = 160, seed: int = 0) -> Image.Image:
    """A non-symmetric grayscale picture: a ramp, a bright bar off-centre, and some noise."""
    rng = np.random.default_rng(seed)
    arr = np.tile(np.linspace(10, 120, width, dtype=np.float32), (height, 1))
    arr[height // 5: height // 2, width // 6: width // 3] = 240
    arr += rng.normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def prepared():
    return prepare_image(png(picture()), limits=ImageLimits())


# ---------------------------------------------------------------- compare


def test_identical_images_have_ssim_one_and_zero_difference():
    img = picture()
    result = compare(img, img.copy())
    assert isinstance(result, Comparison)
    assert result.ssim == pytest.approx(1.0)
    assert result.diff.shape == (img.height, img.width)
    assert result.diff.dtype == np.uint8
    assert not result.diff.any()


def test_different_images_score_lower_and_differ():
    a, b = picture(seed=0), picture(seed=0).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    result = compare(a, b)
    assert result.ssim < 0.9
    assert result.diff.max() > 100  # the bright bar moved to the other side
    assert compare(a, picture(seed=1)).ssim > result.ssim  # only the noise differs: closer than a mirror image


def test_reference_is_resized_to_the_query_and_colour_becomes_gray():
    query = picture(120, 120)
    reference = picture(240, 240).convert("RGB")
    result = compare(query, reference)
    assert result.diff.shape == (120, 120)
    assert result.ssim > 0.5  # the same picture at another size


def test_tiny_images_are_refused_plainly():
    with pytest.raises(ImageRejected, match="too small"):
        compare(Image.new("L", (2, 2)), Image.new("L", (2, 2)))


def test_small_images_use_a_smaller_window():
    img = picture(6, 6)
    assert compare(img, img).ssim == pytest.approx(1.0)


# ---------------------------------------------------------------- adjust


def test_no_adjustment_returns_the_prepared_image_itself(prepared):
    assert adjust(prepared, limits=ImageLimits()) is prepared
    assert adjust(prepared, 360, FULL_FRAME, limits=ImageLimits()) is prepared


def test_quarter_turn_is_exact_and_clockwise(prepared):
    turned = adjust(prepared, 90, limits=ImageLimits())
    # PIL's ROTATE_270 is 90° clockwise; the turned image is normalised again like any query.
    expected = normalise(prepared.image.transpose(Image.Transpose.ROTATE_270))
    assert turned.image.size == expected.size
    assert np.array_equal(np.asarray(turned.image), np.asarray(expected))
    assert turned.sha256 != prepared.sha256
    assert turned.source_format == prepared.source_format == "PNG"


def test_fine_rotation_stays_square_and_normalised(prepared):
    turned = adjust(prepared, 7.5, limits=ImageLimits())
    assert turned.image.mode == "L"
    assert turned.image.width == turned.image.height <= 512
    assert turned.sha256 != prepared.sha256
    assert turned.png.startswith(b"\x89PNG")


def test_crop_keeps_the_region_and_restretches_it(prepared):
    side = prepared.image.width
    cropped = adjust(prepared, 0, (0.25, 0.25, 0.75, 0.75), limits=ImageLimits())
    assert cropped.image.size == (side // 2, side // 2)
    arr = np.asarray(cropped.image)
    assert arr.min() == 0 and arr.max() == 255  # contrast stretched again over the kept region
    # Deterministic: the same adjustment hashes the same (the page keys its cache on this).
    assert adjust(prepared, 0, (0.25, 0.25, 0.75, 0.75), limits=ImageLimits()).sha256 == cropped.sha256


def test_rotation_happens_before_the_crop(prepared):
    # The crop box is in the rotated frame: what the user sees after turning the image.
    left_half_after_turn = adjust(prepared, 180, (0.0, 0.0, 0.5, 1.0), limits=ImageLimits())
    right_half = adjust(prepared, 0, (0.5, 0.0, 1.0, 1.0), limits=ImageLimits())
    expected = right_half.image.transpose(Image.Transpose.ROTATE_180)
    assert np.array_equal(np.asarray(left_half_after_turn.image), np.asarray(expected))


@pytest.mark.parametrize("box", [(0.5, 0.0, 0.5, 1.0), (0.0, 0.8, 1.0, 0.2), (-0.1, 0.0, 1.0, 1.0), (0.0, 0.0, 1.2, 1.0)])
def test_empty_or_outside_crop_is_refused(prepared, box):
    with pytest.raises(ImageRejected, match="crop must keep"):
        adjust(prepared, 0, box, limits=ImageLimits())


def test_too_small_crop_is_refused_with_the_minimum(prepared):
    with pytest.raises(ImageRejected, match=f"at least {MIN_SIDE} pixels"):
        adjust(prepared, 0, (0.0, 0.0, 0.02, 1.0), limits=ImageLimits())
