"""raiox_core.images: sniffing, limits, decoding of every accepted format, normalisation, hashing.

Every input file is generated here with PIL, numpy or pydicom; nothing binary is committed.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from pngtools import png_chunk_types, png_with_header
from PIL import Image, ImageFile
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from raiox_core.errors import ImageRejected
from raiox_core.images import (
    NORMALISED_SIDE,
    ImageLimits,
    PreparedImage,
    _encode_png,
    normalise,
    prepare_image,
    sniff_format,
    thumbnail_png,
)

# ---------------------------------------------------------------- helpers


def gradient(width: int = 120, height: int = 80, mode: str = "RGB") -> Image.Image:
    """A non-flat test picture: horizontal ramp plus a bright square (an 'implant')."""
    x = np.linspace(20, 200, width, dtype=np.float32)
    y = np.linspace(0, 30, height, dtype=np.float32)[:, None]
    arr = (x[None, :] + y).astype(np.uint8)
    arr[height // 4 : height // 2, width // 4 : width // 2] = 250
    img = Image.fromarray(arr)
    return img if mode == "L" else img.convert(mode)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def dicom_bytes(
    frames: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    patient_name: str = "Anonymous",
) -> bytes:
    """A DICOM Part 10 file (preamble + 'DICM'); `frames` is uint16 (rows, cols) or (n, rows, cols)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = "PID-123456"
    ds.Modality = "DX"
    frames = np.asarray(frames, dtype=np.uint16)
    if frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
        ds.RescaleType = "HU"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = frames.tobytes()
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)  # pydicom 3
    except TypeError:
        ds.save_as(buf, write_like_original=False)  # pydicom 2.x
    return buf.getvalue()


def ramp16(width: int = 64, height: int = 48) -> np.ndarray:
    return np.tile(np.linspace(0, 1000, width), (height, 1)).astype(np.uint16)


def assert_sentence(message: str) -> None:
    assert message.endswith("."), message
    assert "\n" not in message and "Traceback" not in message, message
    assert 0 < len(message) < 200, message


def rejected(data: bytes, limits: ImageLimits = ImageLimits()) -> str:
    with pytest.raises(ImageRejected) as info:
        prepare_image(data, limits)
    message = str(info.value)
    assert_sentence(message)
    return message


def assert_normalised(prepared: PreparedImage) -> None:
    img = prepared.image
    assert img.mode == "L"
    assert img.width == img.height <= NORMALISED_SIDE
    stored = Image.open(io.BytesIO(prepared.png))
    assert stored.format == "PNG" and stored.mode == "L" and stored.size == img.size
    assert stored.tobytes() == img.tobytes()
    assert len(prepared.sha256) == 64 and int(prepared.sha256, 16) >= 0


# ---------------------------------------------------------------- accepted formats


@pytest.mark.parametrize(
    "fmt, params",
    [
        ("JPEG", {"quality": 92}),
        ("PNG", {}),
        ("BMP", {}),
        ("WEBP", {"lossless": True}),
        ("TIFF", {}),
        ("GIF", {}),
    ],
)
def test_each_pil_format_is_accepted(fmt, params):
    prepared = prepare_image(encode(gradient(120, 80), fmt, **params), limits=ImageLimits())
    assert prepared.source_format == fmt
    assert (prepared.width, prepared.height) == (120, 80)
    assert_normalised(prepared)
    assert prepared.image.size == (120, 120)  # smaller than NORMALISED_SIDE: padded, not upscaled
    arr = np.asarray(prepared.image)
    assert arr.min() == 0 and arr.max() == 255  # contrast stretched


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_16_bit_greyscale_is_scaled_to_the_full_8_bit_range(fmt):
    arr = np.tile(np.linspace(1000, 1200, 100), (60, 1)).astype(np.uint16)  # narrow band, far above 255
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    prepared = prepare_image(encode(img, fmt), limits=ImageLimits())
    assert prepared.source_format == fmt
    content = np.asarray(prepared.image)[20:80, :]  # the 60 rows between the padding bands
    assert content.min() == 0 and content.max() == 255
    assert len(np.unique(content)) > 50  # scaled, not clipped to a few values
    assert np.all(np.diff(content[30].astype(int)) >= 0)  # ramp stays a ramp


def test_animated_gif_uses_the_first_frame():
    first = np.zeros((64, 64), np.uint8)
    first[:, :32] = 255  # left half bright
    second = np.zeros((64, 64), np.uint8)
    second[:, 32:] = 255  # right half bright
    frames = [Image.fromarray(first).convert("P"), Image.fromarray(second).convert("P")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    arr = np.asarray(prepare_image(data, limits=ImageLimits()).image)
    assert arr[:, :32].mean() > 200 and arr[:, 32:].mean() < 50


def test_png_bytes_behind_a_jpg_name_are_sniffed_as_png(tmp_path):
    path = tmp_path / "implant.jpg"
    path.write_bytes(encode(gradient(), "PNG"))
    data = path.read_bytes()
    assert sniff_format(data) == "PNG"
    assert prepare_image(data, limits=ImageLimits()).source_format == "PNG"


def test_sniff_format_recognises_every_accepted_format():
    img = gradient(40, 40)
    for fmt in ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP"):
        assert sniff_format(encode(img, fmt)) == fmt
    assert sniff_format(dicom_bytes(ramp16())) == "DICOM"


def test_cmyk_jpeg_is_accepted():
    data = encode(gradient(100, 70, "CMYK"), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    prepared = prepare_image(data, limits=ImageLimits())
    assert_normalised(prepared)
    assert np.asarray(prepared.image).std() > 10


def test_palette_png_with_transparency_is_composited_onto_black():
    arr = np.zeros((64, 64), np.uint8)
    arr[16:48, 16:48] = 1
    img = Image.fromarray(arr, mode="L").convert("P")
    img.putpalette([255, 255, 255, 90, 90, 90] + [0] * 762)  # index 0 white but transparent
    data = encode(img, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = np.asarray(prepare_image(data, limits=ImageLimits()).image)
    assert out[0, 0] == 0  # transparent white became black
    assert out[32, 32] == 255  # the opaque grey square is now the brightest thing


def test_rgba_png_transparent_area_becomes_black():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[16:48, 16:48, 3] = 255  # only the centre is opaque
    rgba[20:44, 20:44, :3] = 128
    out = np.asarray(prepare_image(encode(Image.fromarray(rgba), "PNG"), limits=ImageLimits()).image)
    assert out[2, 2] == 0 and out[32, 32] > 0 and out[17, 17] == 255


def test_exif_rotated_jpeg_is_turned_upright_and_exif_is_dropped():
    img = gradient(120, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    exif[0x010E] = "Maria Silva, 1961-04-02"  # ImageDescription
    exif[0x013B] = "Maria Silva"  # Artist
    data = encode(img, "JPEG", exif=exif.tobytes())
    assert b"Maria Silva" in data
    prepared = prepare_image(data, limits=ImageLimits())
    assert (prepared.width, prepared.height) == (60, 120)
    assert b"Maria Silva" not in prepared.png
    stored = Image.open(io.BytesIO(prepared.png))
    assert not stored.getexif() and "exif" not in stored.info
    assert png_chunk_types(prepared.png) == [b"IHDR", b"IDAT", b"IEND"]
    # the bright 'implant' square moved with the rotation: top-left quadrant -> top-right
    arr = np.asarray(prepared.image)
    assert arr[30:60, 60:90].mean() > arr[30:60, 30:60].mean()


def test_png_text_chunks_are_not_kept():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Patient", "Maria Silva")
    prepared = prepare_image(encode(gradient(), "PNG", pnginfo=info), limits=ImageLimits())
    assert b"Maria Silva" not in prepared.png
    assert png_chunk_types(prepared.png) == [b"IHDR", b"IDAT", b"IEND"]


@given(side=st.integers(1, 70), width_extra=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
@hyp_settings(max_examples=40, deadline=None)
def test_stored_png_decodes_to_exactly_the_normalised_pixels(side, width_extra, seed):
    # The greyscale PNG writer is our own: any size, any pixel values (row differences wrap around) must
    # come back bit for bit through an independent decoder, with a valid CRC on every chunk.
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side + width_extra), dtype=np.uint8)
    pixels[: side // 2] = 255 - pixels[: side // 2] // 7  # smooth and noisy parts: both filter paths of zlib
    data = _encode_png(Image.fromarray(pixels))
    assert png_chunk_types(data) == [b"IHDR", b"IDAT", b"IEND"]
    Image.open(io.BytesIO(data)).verify()  # checks every chunk's CRC
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == "L" and decoded.size == (side + width_extra, side)
    assert np.array_equal(np.asarray(decoded), pixels)


# ---------------------------------------------------------------- DICOM


def test_dicom_monochrome2_is_read():
    prepared = prepare_image(dicom_bytes(ramp16()), limits=ImageLimits())
    assert prepared.source_format == "DICOM"
    assert (prepared.width, prepared.height) == (64, 48)
    assert_normalised(prepared)
    row = np.asarray(prepared.image)[32]
    assert row[0] == 0 and row[-1] == 255  # ramp: dark left, bright right


def test_dicom_monochrome1_is_inverted():
    normal = np.asarray(prepare_image(dicom_bytes(ramp16()), limits=ImageLimits()).image)
    inverted = np.asarray(prepare_image(dicom_bytes(ramp16(), photometric="MONOCHROME1"), limits=ImageLimits()).image)
    row = inverted[32]
    assert row[0] == 255 and row[-1] == 0
    content = slice(8, 56)  # the 48 rows between the padding bands stay black in both
    assert np.abs(inverted[content].astype(int) + normal[content] - 255).max() <= 1


def test_dicom_rescale_slope_and_intercept_are_applied_before_windowing():
    # Stored 0..1000 -> HU -1000..1000 with slope 2 / intercept -1000. A window of 0 +/- 200 HU
    # then leaves ~40% black, ~40% white. Without the rescale the same window would saturate
    # nearly everything to white (stored values are all >= 0).
    stored = np.tile(np.linspace(0, 1000, 100), (100, 1)).astype(np.uint16)
    data = dicom_bytes(stored, slope=2.0, intercept=-1000.0, window=(0.0, 400.0))
    arr = np.asarray(prepare_image(data, limits=ImageLimits()).image)
    black, white = (arr == 0).mean(), (arr == 255).mean()
    assert 0.35 < black < 0.45 and 0.35 < white < 0.45


def test_multi_frame_dicom_uses_the_first_frame():
    frames = np.stack([ramp16(), ramp16()[:, ::-1]])
    row = np.asarray(prepare_image(dicom_bytes(frames), limits=ImageLimits()).image)[32]
    assert row[0] == 0 and row[-1] == 255


def test_dicom_patient_data_never_reaches_the_png():
    data = dicom_bytes(ramp16(), patient_name="Silva^Maria")
    assert b"Silva^Maria" in data
    prepared = prepare_image(data, limits=ImageLimits())
    for secret in (b"Silva", b"Maria", b"PID-123456", b"DICM"):
        assert secret not in prepared.png
    assert png_chunk_types(prepared.png) == [b"IHDR", b"IDAT", b"IEND"]


def test_truncated_dicom_is_rejected():
    data = dicom_bytes(ramp16())
    assert "DICOM" in rejected(data[: len(data) - 2000])


def test_dicom_without_pixels_is_rejected():
    data = dicom_bytes(ramp16())
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    assert "no image" in rejected(buf.getvalue())


# ---------------------------------------------------------------- refusals


def test_empty_file_is_rejected():
    assert rejected(b"") == "The file is empty."


@pytest.mark.parametrize(
    "data, what",
    [
        (b"Implant report for patient 42.\nDiameter 4.1 mm\n", "plain-text"),
        (b"BMW service report\nall fine\n" * 3, "plain-text"),  # 'BM' alone is not a bitmap
        (b"<!DOCTYPE html><html><body><img src=x.jpg></body></html>", "HTML document"),
        (b"\xef\xbb\xbf  <html lang='pt'><head></head></html>", "HTML document"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>', "SVG"),
        (b'<svg width="10" height="10"></svg>', "SVG"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "ZIP"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    ],
)
def test_non_images_are_named(data, what):
    message = rejected(data)
    assert what in message and "not an image" in message


def test_unknown_binary_is_rejected_listing_the_accepted_formats():
    message = rejected(bytes(range(256)) * 4)
    assert "JPEG" in message and "DICOM" in message


@pytest.mark.parametrize("fmt, keep", [("JPEG", 0.6), ("PNG", 0.6), ("PNG", 0.98)])
def test_truncated_files_are_rejected(fmt, keep):
    data = encode(gradient(300, 200), fmt)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    message = rejected(data[: int(len(data) * keep)])
    assert f"{fmt} file is truncated or corrupt" in message


def test_png_header_claiming_40000_by_40000_is_rejected_without_decoding():
    data = png_with_header(40000, 40000)
    assert len(data) < 200
    message = rejected(data)
    assert "megapixels" in message and "50 megapixels" in message


def test_pixel_limit_is_checked_from_the_header():
    message = rejected(png_with_header(9000, 9000))  # 81 MP: below PIL's own bomb limit, above ours
    assert message == "The image is 9000x9000 pixels (81 megapixels); the limit is 50 megapixels."
    message = rejected(encode(gradient(100, 100), "PNG"), ImageLimits(max_pixels=5000))
    assert "100x100" in message and "5,000 pixels" in message


def test_file_over_max_bytes_is_rejected_before_anything_else():
    data = encode(gradient(300, 200), "PNG")
    assert len(data) > 2048
    message = rejected(data, ImageLimits(max_bytes=1000))
    assert message == f"The file is {len(data):,} bytes; the limit is 1,000 bytes."
    assert rejected(data, ImageLimits(max_bytes=1024)).endswith("the limit is 1 KB.")
    message = rejected(bytes(20 * 2**20 + 1), ImageLimits())  # one byte over: rounding must not hide it
    assert message == "The file is 20,971,521 bytes; the limit is 20 MB (20,971,520 bytes)."
    big = b"\xff\xd8\xff" + bytes(27 * 1024 * 1024 - 3)  # not even a valid JPEG: size comes first
    assert rejected(big) == "The file is 27.0 MB; the limit is 20 MB."


@pytest.mark.parametrize(
    "size, needle",
    [
        ((1, 1), "The image is 1x1 pixels; each side must be at least 32 pixels."),
        ((6000, 4), "at least 32 pixels"),
        ((31, 200), "at least 32 pixels"),
        ((300, 32), "The image is 300x32 pixels, an aspect ratio of 9.4:1; the limit is 8:1."),
        ((40, 400), "aspect ratio of 10.0:1"),
    ],
)
def test_too_small_or_too_elongated_images_are_rejected(size, needle):
    assert needle in rejected(encode(Image.new("L", size, 128), "PNG"))


def test_limits_from_settings(settings):
    limits = ImageLimits.from_settings(settings.with_(max_upload_mb=1.5, max_pixels=123456))
    assert limits == ImageLimits(max_bytes=int(1.5 * 1024 * 1024), max_pixels=123456)


# ---------------------------------------------------------------- normalisation and hashing


@pytest.mark.parametrize("size", [(32, 32), (100, 50), (50, 100), (512, 300), (1500, 900), (700, 2000)])
def test_output_is_grey_square_and_at_most_normalised_side(size):
    prepared = prepare_image(encode(gradient(*size), "PNG"), limits=ImageLimits())
    assert_normalised(prepared)
    expected = min(max(size), NORMALISED_SIDE)
    assert prepared.image.size == (expected, expected)


def test_padding_is_black_and_centred():
    bands = np.tile(np.array([100, 200], np.uint8).repeat(50), (40, 1))  # two grey bands, 40 rows high
    arr = np.asarray(prepare_image(encode(Image.fromarray(bands).convert("RGB"), "PNG"), limits=ImageLimits()).image)
    assert arr.shape == (100, 100)
    assert (arr[:30] == 0).all() and (arr[70:] == 0).all() and (arr[30:70, 50:] == 255).all()


@pytest.mark.parametrize("mode, value", [("L", 0), ("L", 128), ("RGB", (255, 255, 255)), ("I;16", 40000)])
def test_a_blank_image_is_refused(mode, value):
    blank = Image.new(mode, (64, 64), value)
    blank.putpixel((3, 3), 0 if mode == "I;16" else (7 if mode == "L" else (7, 7, 7)))  # one dead pixel: still blank
    fmt = "TIFF" if mode == "I;16" else "PNG"
    assert rejected(encode(blank, fmt)) == "The image is blank (it has no contrast), so it cannot show an implant."


def test_an_oversized_file_states_its_real_size_or_says_larger():
    head = bytes(1001)  # what a reader that stops at max_bytes + 1 hands over
    limits = ImageLimits(max_bytes=1000)
    with pytest.raises(ImageRejected, match=r"^The file is 26,000 bytes; the limit is 1,000 bytes\.$"):
        prepare_image(head, limits, size=26_000)
    with pytest.raises(ImageRejected, match=r"^The file is larger than the limit of 1,000 bytes\.$"):
        prepare_image(head, limits, size=0)
    with pytest.raises(ImageRejected, match=r"^The file is larger than the limit of 20 MB\.$"):
        prepare_image(bytes(20 * 2**20 + 1), size=0, limits=ImageLimits())


def test_corrupt_compressed_dicom_is_refused_quietly(capfd):
    import logging

    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(ramp16(256, 256))))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf)
    data = bytearray(buf.getvalue())
    item = b"\xfe\xff\x00\xe0"  # (FFFE,E000): the offset table, then the frame's fragment
    fragment = data.index(item, data.index(item) + 4) + 8
    data[fragment : fragment + 4] = (99).to_bytes(4, "little")  # an RLE header claiming 99 segments
    logging.basicConfig(force=True)  # as an application that logs to stderr would
    try:
        message = rejected(bytes(data))
    finally:
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    assert message == "The DICOM file is truncated, corrupt or uses an encoding we cannot decode."
    out, err = capfd.readouterr()
    assert "Traceback" not in err + out and "pydicom" not in err + out


def test_flat_images_do_not_divide_by_zero():
    for value in (0, 77, 255):
        arr = np.asarray(normalise(Image.new("L", (64, 64), value)))
        assert (arr == value).all()
    assert (np.asarray(normalise(Image.new("F", (64, 64), 3.5))) == 0).all()
    assert (np.asarray(normalise(Image.fromarray(np.full((64, 64), 40000, np.uint16)))) == 0).all()


def test_normalise_accepts_any_mode():
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"):
        out = normalise(gradient(80, 60, "L").convert(mode))
        assert out.mode == "L" and out.size == (80, 80)
    for mode in ("I;16", "I;16B", "LAB", "HSV", "PA", "RGBa"):
        out = normalise(Image.new(mode, (80, 60)))
        assert out.mode == "L" and out.size == (80, 80)


def test_same_pixels_with_different_metadata_hash_the_same():
    from PIL.PngImagePlugin import PngInfo

    img = gradient(90, 70)
    info = PngInfo()
    info.add_text("Comment", "scanned at clinic B")
    exif = Image.Exif()
    exif[0x013B] = "Someone"
    plain = prepare_image(encode(img, "PNG"), limits=ImageLimits())
    tagged = prepare_image(encode(img, "PNG", pnginfo=info, exif=exif.tobytes(), dpi=(300, 300)), limits=ImageLimits())
    assert plain.sha256 == tagged.sha256
    assert plain.png == tagged.png
    assert prepare_image(encode(img, "BMP"), limits=ImageLimits()).sha256 == plain.sha256  # other lossless container
    other = prepare_image(encode(gradient(90, 70).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"), limits=ImageLimits())
    assert other.sha256 != plain.sha256
    resized = prepare_image(encode(gradient(91, 70), "PNG"), limits=ImageLimits())
    assert resized.sha256 != plain.sha256



def test_prepare_image_is_thread_safe():
    formats = ["PNG", "JPEG", "TIFF", "WEBP"] * 3
    inputs = [encode(gradient(100 + i * 7, 90), fmt) for i, fmt in enumerate(formats)]
    expected = [prepare_image(d, limits=ImageLimits()).sha256 for d in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda d: prepare_image(d, limits=ImageLimits()).sha256, inputs * 3)) == expected * 3


def test_thumbnail_png():
    stored = prepare_image(encode(gradient(800, 600), "JPEG"), limits=ImageLimits()).png
    thumb = Image.open(io.BytesIO(thumbnail_png(stored, limits=ImageLimits())))
    assert thumb.format == "PNG" and thumb.size == (160, 160) and thumb.mode == "L"
    small = Image.open(io.BytesIO(thumbnail_png(stored, side=64, limits=ImageLimits())))
    assert small.size == (64, 64)
    tiny = prepare_image(encode(gradient(40, 40), "PNG"), limits=ImageLimits()).png
    assert Image.open(io.BytesIO(thumbnail_png(tiny, limits=ImageLimits()))).size == (40, 40)  # never upscaled
    with pytest.raises(ImageRejected):
        thumbnail_png(b"not a png", limits=ImageLimits())


# ---------------------------------------------------------------- fuzzing

FORMATS = ["JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP"]
MAGICS = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a",
    b"GIF87a",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    bytes(128) + b"DICM",
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt EXIF it skips
@hyp_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(MAGICS), body=st.binary(max_size=600))
def test_random_bytes_only_ever_raise_image_rejected(prefix, body):
    try:
        prepared = prepare_image(prefix + body, limits=ImageLimits())
    except ImageRejected as exc:
        assert_sentence(str(exc))
    else:  # astonishingly valid: it must still be a proper normalised image
        assert_normalised(prepared)


@pytest.mark.filterwarnings("ignore::UserWarning")
@hyp_settings(max_examples=100, deadline=None)
@given(cut=st.floats(0.0, 0.999), fmt=st.sampled_from(["DICOM", *FORMATS]))
def test_truncated_real_files_only_ever_raise_image_rejected(cut, fmt):
    data = dicom_bytes(ramp16()) if fmt == "DICOM" else encode(gradient(64, 48), fmt)
    try:
        prepare_image(data[: int(len(data) * cut)], limits=ImageLimits())
    except ImageRejected as exc:
        assert_sentence(str(exc))


def test_a_dicom_of_a_pngs_pixels_hashes_like_the_png():
    """The same pixels normalise to the same image whatever the container, so an exact copy is recognised."""
    pixels = (np.add.outer(np.arange(48), np.arange(64)) * 2 % 256).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    assert prepare_image(dicom_bytes(pixels), limits=ImageLimits()).sha256 == prepare_image(png.getvalue(), limits=ImageLimits()).sha256
