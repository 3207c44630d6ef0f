"""Image intake: sniff the real format, enforce limits, decode (DICOM too), normalise, hash.

Everything that comes in is untrusted: the format is taken from the bytes, never the name, limits are
checked before any pixel is decoded, and every refusal is an `ImageRejected` with one plain sentence.
Normalisation is deterministic (same pixels in, same PNG and hash out) and keeps no metadata.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageRejected

# Stored and embedded images are this many pixels on a side at most (the model sees 224).
NORMALISED_SIDE = 512
MIN_SIDE = 32
MAX_ASPECT = 8.0
ACCEPTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP", "DICOM")

# Contrast stretch: these percentiles map to 0 and 255, so a few hot or dead pixels don't flatten the rest.
STRETCH_PERCENTILES = (0.5, 99.5)

_MAGIC = [
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
]
# BMP's magic is only "BM", so also require a known DIB header size; a text file may start with "BM".
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_NOT_IMAGES = [
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive or an Office document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image, which is not supported"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 image, which is not supported"),
]
_HEIC_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"}


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied before and while decoding."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000

    @classmethod
    def from_settings(cls, settings) -> "ImageLimits":
        return cls(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)


@dataclass(frozen=True)
class PreparedImage:
    """A validated, normalised image ready to store and embed."""

    image: Image.Image  # mode "L", square, at most NORMALISED_SIDE on a side
    sha256: str  # hex digest of the normalised pixels: equal content, equal hash
    source_format: str  # one of ACCEPTED_FORMATS, from the bytes, not the name
    width: int  # of the decoded original, after EXIF orientation
    height: int

    @cached_property
    def png(self) -> bytes:
        """`image` encoded as PNG with no metadata: what storage keeps. Encoded on first use only, so a
        match (which stores nothing) does not pay for it."""
        return _encode_png(self.image)


def sniff_format(data: bytes) -> str:
    """Return the format from magic bytes, or raise ImageRejected naming what the file looks like."""
    if not data:
        raise ImageRejected("The file is empty.")
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if data[128:132] == b"DICM":
        return "DICOM"
    what = _describe_non_image(data)
    if what:
        raise ImageRejected(f"The file looks like {what}, not an image.")
    raise ImageRejected(
        "The file is not an image format we accept; use JPEG, PNG, TIFF, BMP, GIF, WebP or DICOM."
    )


def _describe_non_image(data: bytes) -> str | None:
    """A short name for common non-image files, so the refusal tells the user what they sent."""
    for magic, what in _NOT_IMAGES:
        if data.startswith(magic):
            return what
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIC_BRANDS:
            return "a HEIC photo (export it as JPEG or PNG)"
        return "an AVIF image, which is not supported" if brand in (b"avif", b"avis") else "a video file"
    text = data[:2048].decode("utf-8", "replace").lstrip("\ufeff \t\r\n").lower()
    if text.startswith(("<!doctype html", "<html")) or "<html" in text[:512]:
        return "an HTML document"
    if "<svg" in text:
        return "an SVG drawing"
    if text.startswith("<?xml"):
        return "an XML document"
    printable = sum(c.isprintable() and c != "\ufffd" or c in "\t\r\n" for c in text)
    if text and printable >= 0.95 * len(text):
        return "a plain-text file"
    return None


def prepare_image(data: bytes, limits: ImageLimits, size: int | None = None) -> PreparedImage:
    """Validate, decode and normalise raw file bytes; raise ImageRejected with a one-sentence reason.

    Order matters: the byte size is checked first, then the format is sniffed, then the dimensions
    from the header are checked against `limits.max_pixels`, MIN_SIDE and MAX_ASPECT, then the pixels
    are decoded (fully, so truncated files are refused rather than grey-filled), and last an image with
    no contrast (blank) is refused: it cannot show an implant, as a reference or as a query.
    `size` is the whole file's size when `data` is only its start (readers stop at `max_bytes + 1`
    bytes), or 0 when that size is unknown; by default `data` is the whole file.
    """
    if len(data) > limits.max_bytes:
        size = len(data) if size is None else size
        raise ImageRejected(_too_big(size if size > limits.max_bytes else None, limits.max_bytes))
    fmt = sniff_format(data)
    if fmt == "DICOM":
        image, width, height = _decode_dicom(data, limits)
    else:
        image, width, height = _decode_pil(data, fmt, limits)
    gray = _stretch(_gray_array(image))
    image.close()  # the decoded original (up to max_pixels, 16-bit or float) is not needed any more
    del image
    if not _has_contrast(gray):
        raise ImageRejected("The image is blank (it has no contrast), so it cannot show an implant.")
    out = _fit_square(gray)
    return PreparedImage(
        image=out,
        sha256=_pixel_hash(out),
        source_format=fmt,
        width=width,
        height=height,
    )


def _check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    """Refuse by header dimensions, before any pixel is decoded."""
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"The image is {width}x{height} pixels ({_pixels(width * height)}); "
            f"the limit is {_pixels(limits.max_pixels)}."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(
            f"The image is {width}x{height} pixels; each side must be at least {MIN_SIDE} pixels."
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageRejected(
            f"The image is {width}x{height} pixels, an aspect ratio of "
            f"{max(width, height) / min(width, height):.1f}:1; the limit is {MAX_ASPECT:g}:1."
        )


def _decode_pil(data: bytes, fmt: str, limits: ImageLimits) -> tuple[Image.Image, int, int]:
    try:
        # `formats` pins the decoder to the sniffed format; Image.open reads only the header.
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            _check_dimensions(*img.size, limits)
            img.load()  # full decode inside the try: truncated or corrupt data fails here
            try:
                ImageOps.exif_transpose(img, in_place=True)
            except Exception:  # a broken EXIF block should not cost the user the picture
                pass
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL refuses beyond 2x its global MAX_IMAGE_PIXELS before we see the size (we never change
        # that global), or warns beyond 1x when warnings are errors.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"has {_pixels(int(found.group(1)))}" if found else "has too many pixels to decode safely"
        raise ImageRejected(f"The image {size}; the limit is {_pixels(limits.max_pixels)}.") from None
    except Exception:  # untrusted bytes: PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise ImageRejected(f"The {_label(fmt)} file is truncated or corrupt.") from None
    return img, img.width, img.height


def _decode_dicom(data: bytes, limits: ImageLimits) -> tuple[Image.Image, int, int]:
    """First frame as a float image, after modality LUT, VOI LUT/windowing and MONOCHROME1 inversion."""
    import pydicom


    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

        def pixel_array(ds, index):
            arr = ds.pixel_array
            return arr[index] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise ImageRejected("The DICOM file contains no image.")
        width, height = int(ds.Columns), int(ds.Rows)
        _check_dimensions(width, height, limits)
        arr = pixel_array(ds, index=0)
        arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim == 3:  # colour (pydicom converts YBR to RGB): luma, as PIL's "L" conversion does
            arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if arr.shape != (height, width):
            raise ValueError("unexpected pixel array shape")
        if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
            arr = -arr  # MONOCHROME1 means high values are dark; the stretch maps any range back to 0..255
        arr = _integers_when_exact(arr)
    except ImageRejected:
        raise
    except Exception:  # untrusted bytes: pydicom raises many types
        message = "The DICOM file is truncated, corrupt or uses an encoding we cannot decode."
        raise ImageRejected(message) from None
    return Image.fromarray(np.ascontiguousarray(arr)), width, height  # mode "L", "I;16" or (float32) "F"


def _integers_when_exact(arr: np.ndarray) -> np.ndarray:
    """Whole-numbered pixels (most radiographs, unless a window interpolates) as uint8/uint16, else unchanged.

    Integers take the exact histogram stretch that the same pixels in a PNG or TIFF take; the float path
    interpolates its percentiles, so a DICOM of a stored reference's pixels would not hash like it. A
    negative range (MONOCHROME1's inversion) is shifted to start at 0, which the stretch ignores.
    """
    if not arr.size or not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
        return arr
    shifted = arr - arr.min() if arr.min() < 0 else arr
    if shifted.max() > 0xFFFF:
        return arr
    return shifted.astype(np.uint8 if shifted.max() <= 0xFF else np.uint16)


def normalise(image: Image.Image) -> Image.Image:
    """EXIF-oriented decoded image -> 8-bit grayscale, contrast-stretched, padded square, resized.

    - Grayscale: transparency is composited onto black (radiograph backgrounds are dark); 16-bit and
      float data are stretched straight from their own range, never clipped to 8 bits first.
    - Stretch: the 0.5th..99.5th percentiles map to 0..255; a flat image has no contrast to stretch
      and stays as it is (8-bit) or becomes black (other depths).
    - Size: a long side over NORMALISED_SIDE is scaled down to exactly NORMALISED_SIDE (LANCZOS, aspect
      kept); smaller images are never upscaled. Then it is padded with black, centred, to a square
      (black is the stretched image's own dark value).
    The result is a fresh image with no metadata.
    """
    return _fit_square(_stretch(_gray_array(image)))


def _has_contrast(gray: np.ndarray) -> bool:
    """False when the stretch found (almost) nothing to stretch: 99% or more of the pixels alike."""
    cdf = np.cumsum(_histogram(gray, 256))
    low = np.searchsorted(cdf, cdf[-1] * STRETCH_PERCENTILES[0] / 100, side="right")
    high = np.searchsorted(cdf, cdf[-1] * STRETCH_PERCENTILES[1] / 100, side="left")
    return bool(high > low)


def _fit_square(gray: np.ndarray) -> Image.Image:
    """uint8 pixels -> scaled down to NORMALISED_SIDE at most, padded with black to a centred square."""
    height, width = gray.shape
    img = Image.fromarray(gray)  # uint8: mode "L"
    long_side = max(width, height)
    if long_side > NORMALISED_SIDE:
        scale = NORMALISED_SIDE / long_side
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    side = max(img.size)
    square = Image.new("L", (side, side), 0)
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return square


def _gray_array(image: Image.Image) -> np.ndarray:
    """One channel, at the image's own bit depth (uint8, uint16, int32 or float32)."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "L"):
        return _to_array(image)
    if mode == "P" and "transparency" in image.info or mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return _to_array(Image.alpha_composite(black, rgba).convert("L"))
    if mode in ("1", "P", "RGB"):
        return _to_array(image.convert("L"))
    try:
        return _to_array(image.convert("RGB").convert("L"))  # CMYK, YCbCr, LAB, HSV, ...
    except ValueError:
        raise ImageRejected(f"The image's pixel format ({mode}) is not one we can read.") from None


_STRIP_ROWS = 256


def _to_array(image: Image.Image) -> np.ndarray:
    """np.asarray(image) without its peak: PIL's tobytes() joins chunks, briefly holding two more full
    copies of the pixels (~600 MB for a 49-megapixel upload); copied in strips, the extra is one strip."""
    if image.height <= _STRIP_ROWS:
        return np.asarray(image)
    strips = (image.crop((0, top, image.width, min(top + _STRIP_ROWS, image.height)))
              for top in range(0, image.height, _STRIP_ROWS))
    first = np.asarray(next(strips))
    out = np.empty((image.height, *first.shape[1:]), first.dtype)
    out[:_STRIP_ROWS] = first
    for index, strip in enumerate(strips, start=1):
        out[index * _STRIP_ROWS : (index + 1) * _STRIP_ROWS] = np.asarray(strip)
    return out


def _stretch(arr: np.ndarray) -> np.ndarray:
    """Map the STRETCH_PERCENTILES of `arr` to 0..255 (uint8); flat images do not divide by zero."""
    if arr.dtype.kind in "ui" and arr.size and arr.min() >= 0 and arr.max() <= 0xFFFF:
        # Integer data up to 16 bits: exact percentiles from a histogram, then a lookup table (fast).
        arr = arr.astype(np.uint16 if arr.dtype.itemsize > 1 else np.uint8, copy=False)
        cdf = np.cumsum(_histogram(arr, 256))
        low = int(np.searchsorted(cdf, cdf[-1] * STRETCH_PERCENTILES[0] / 100, side="right"))
        high = int(np.searchsorted(cdf, cdf[-1] * STRETCH_PERCENTILES[1] / 100, side="left"))
        if high <= low:  # almost flat: fall back to the full range
            low, high = int(arr.min()), int(arr.max())
        if high <= low:
            return arr if arr.dtype == np.uint8 else np.zeros(arr.shape, np.uint8)
        values = np.arange(len(cdf), dtype=np.float32)
        lut = np.clip((values - low) * (255.0 / (high - low)) + 0.5, 0, 255).astype(np.uint8)
        return lut[arr]
    arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if not arr.size:
        return np.zeros(arr.shape, np.uint8)
    low, high = np.percentile(arr, STRETCH_PERCENTILES)
    if high <= low:
        low, high = float(arr.min()), float(arr.max())
    if high <= low:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((arr - low) * (255.0 / (high - low)) + 0.5, 0, 255).astype(np.uint8)


def _histogram(arr: np.ndarray, minlength: int) -> np.ndarray:
    """np.bincount over `arr` a million pixels at a time: bincount casts its input to int64, 8 bytes a
    pixel, which for a 49-megapixel upload would be a 400 MB copy."""
    flat = arr.reshape(-1)
    step = 1 << 20
    counts = np.zeros(minlength, np.int64)
    for start in range(0, flat.size, step):
        part = np.bincount(flat[start : start + step], minlength=minlength)
        if part.size > counts.size:
            part[: counts.size] += counts
            counts = part
        else:
            counts[: part.size] += part
    return counts


def _pixel_hash(image: Image.Image) -> str:
    """Hex SHA-256 of mode, size and raw pixels: the same picture with other metadata hashes the same."""
    header = f"{image.mode} {image.width}x{image.height}\n".encode()
    return hashlib.sha256(header + image.tobytes()).hexdigest()


def _encode_png(image: Image.Image) -> bytes:
    """PNG of the pixels alone: no info, EXIF or text chunk from the source survives."""
    if image.mode == "L":
        return _gray_png(np.asarray(image))
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _gray_png(pixels: np.ndarray) -> bytes:
    """8-bit greyscale PNG written directly: every row "Up"-filtered, deflated with run-length matching.

    What every reference costs to store: ~2.5 ms for a 384x384 radiograph, against ~6 ms for Pillow's
    encoder at level 1 (which tries five filters per row), and about 10% smaller (bench/README.md).
    """
    height, width = pixels.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 2  # filter type Up: a row minus the row above (the first row minus zeros, i.e. itself)
    rows[0, 1:] = pixels[0]
    np.subtract(pixels[1:], pixels[:-1], out=rows[1:, 1:])  # uint8 wraps modulo 256, as PNG specifies
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = deflate.compress(rows.tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, greyscale, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def thumbnail_png(png: bytes, limits: ImageLimits, side: int = 160) -> bytes:
    """A small PNG of a stored image for galleries and hover previews.

    The image is scaled down (never up) to fit `side` x `side`, keeping its aspect ratio.
    """
    try:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as img:
            if img.width * img.height > limits.max_pixels:
                raise ImageRejected("The stored image is too large to preview.")
            img.load()
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGBA" if "transparency" in img.info or "A" in img.mode else "RGB")
            small = img.copy()
    except ImageRejected:
        raise
    except Exception:
        raise ImageRejected("The stored image could not be read.") from None
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    return _encode_png(small)


def _label(fmt: str) -> str:
    return "WebP" if fmt == "WEBP" else fmt


def _trim(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _too_big(size: int | None, limit: int) -> str:
    """'The file is 27.0 MB; the limit is 20 MB.', in the limit's unit; bytes if rounding hides the excess.

    With `size` unknown (a stream read only up to the limit), 'The file is larger than the limit of 20 MB.'
    """
    if size is None:
        return f"The file is larger than the limit of {_trim(limit / 2**20) + ' MB' if limit >= 2**20 else f'{limit:,} bytes'}."
    if limit < 2**10:
        return f"The file is {size:,} bytes; the limit is {limit:,} bytes."
    unit, div = ("MB", 2**20) if limit >= 2**20 else ("KB", 2**10)
    shown, limit_shown = f"{size / div:.1f}", _trim(limit / div)
    if float(shown) <= float(limit_shown):  # rounding would hide the excess
        return f"The file is {size:,} bytes; the limit is {limit_shown} {unit} ({limit:,} bytes)."
    return f"The file is {shown} {unit}; the limit is {limit_shown} {unit}."


def _pixels(count: int) -> str:
    return f"{_trim(count / 1e6)} megapixels" if count >= 1_000_000 else f"{count:,} pixels"
