"""Synthetic implant-like radiographs for the demo set and the tests (stored with source 'synthetic').

Everything is drawn in millimetres in the implant's own frame (u across, v along the axis from the
platform at v=0 to the apex at v=length_mm), then sampled on the pixel grid through one rotation,
so geometry, rotation, scale and offset cost a few vectorised numpy passes per image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class ImplantDesign:
    """Geometry of one synthetic implant system (one manufacturer + model)."""

    manufacturer_token: str  # file-name token, e.g. "NOBEL"
    model: str  # e.g. "REPLACE"
    diameters_mm: tuple[float, ...]
    taper: float  # 0 = parallel walls, up to ~0.4 = strongly tapered apex
    thread_pitch: float  # relative to body length
    thread_depth: float  # relative to body width
    apex: str  # "round", "flat" or "pointed"
    collar: float  # height of the smooth collar relative to body length
    length_mm: float = 10.0
    taper_from: float = 0.3  # where along the body (0..1) the taper starts
    thread_shape: str = "v"  # "v" (symmetric), "buttress" (flat crest facing the platform) or "square"
    neck: str = "straight"  # "straight", "beveled" (chamfered platform) or "flared" (tissue-level shoulder)
    connection: str = "conical"  # hollow seen inside the top: "conical", "hex" (short, wide) or "morse" (long, narrow)
    apical_hole: bool = False  # a vent hole through the apex (shows as a dark spot)
    abutment: str = "conical"  # post above the platform: "conical" or "straight"


# Designs of one manufacturer share thread form, connection and neck, so manufacturer-level clusters exist.
CATALOGUE: tuple[ImplantDesign, ...] = (
    # Nobel Biocare: V threads, internal conical connection, chamfered platform.
    ImplantDesign("NOBEL", "REPLACE", (3.5, 4.3, 5.0), taper=0.22, thread_pitch=0.07, thread_depth=0.07,
                  apex="round", collar=0.08, length_mm=11.5, taper_from=0.35, thread_shape="v",
                  neck="beveled", connection="conical"),
    ImplantDesign("NOBEL", "ACTIVE", (3.5, 4.3, 5.0), taper=0.38, thread_pitch=0.10, thread_depth=0.13,
                  apex="pointed", collar=0.03, length_mm=11.5, taper_from=0.15, thread_shape="v",
                  neck="beveled", connection="conical"),
    # Straumann: fine 0.8 mm square threads, round-ish apices; TL has the tall flared tissue-level neck.
    ImplantDesign("STRAUMANN", "BL", (3.3, 4.1, 4.8), taper=0.05, thread_pitch=0.08, thread_depth=0.065,
                  apex="round", collar=0.05, length_mm=10.0, taper_from=0.5, thread_shape="square",
                  neck="straight", connection="conical", abutment="straight"),
    ImplantDesign("STRAUMANN", "BLT", (3.3, 4.1, 4.8), taper=0.32, thread_pitch=0.08, thread_depth=0.065,
                  apex="flat", collar=0.05, length_mm=10.0, taper_from=0.4, thread_shape="square",
                  neck="straight", connection="conical", abutment="straight"),
    ImplantDesign("STRAUMANN", "TL", (3.3, 4.1, 4.8), taper=0.0, thread_pitch=0.08, thread_depth=0.065,
                  apex="round", collar=0.18, length_mm=10.0, thread_shape="square",
                  neck="flared", connection="morse", abutment="straight"),
    # Neodent: deep buttress threads, long Morse-taper connection.
    ImplantDesign("NEODENT", "DRIVE", (3.5, 4.3), taper=0.30, thread_pitch=0.09, thread_depth=0.12,
                  apex="pointed", collar=0.04, length_mm=11.5, taper_from=0.1, thread_shape="buttress",
                  neck="straight", connection="morse"),
    ImplantDesign("NEODENT", "HELIX", (3.5, 4.3, 5.0), taper=0.40, thread_pitch=0.14, thread_depth=0.16,
                  apex="round", collar=0.04, length_mm=11.5, taper_from=0.45, thread_shape="buttress",
                  neck="straight", connection="morse"),
    # Zimmer: fine triple-lead look, short wide hex, flat apex with a vent hole.
    ImplantDesign("ZIMMER", "TSV", (3.7, 4.1, 4.7), taper=0.20, thread_pitch=0.055, thread_depth=0.06,
                  apex="flat", collar=0.09, length_mm=11.5, taper_from=0.4, thread_shape="v",
                  neck="straight", connection="hex", apical_hole=True),
    ImplantDesign("ZIMMER", "TSX", (3.7, 4.1, 4.7), taper=0.30, thread_pitch=0.06, thread_depth=0.10,
                  apex="flat", collar=0.05, length_mm=11.5, taper_from=0.25, thread_shape="buttress",
                  neck="straight", connection="hex", apical_hole=True),
)

FIELD_MM = 22.0  # the image spans about this many millimetres: implant plus a bit of each neighbour


def _tooth(phase: np.ndarray, shape: str) -> np.ndarray:
    """Thread tooth height (0..1) over one pitch; phase in turns."""
    p = phase - np.floor(phase)
    if shape == "buttress":  # steep flank towards the platform, long slope towards the apex
        return np.minimum(p / 0.2, (1.0 - p) / 0.8)
    if shape == "square":  # flat crest: a clipped triangle
        return np.clip(1.6 * (1.0 - np.abs(2.0 * p - 1.0)) - 0.3, 0.0, 1.0)
    return 1.0 - np.abs(2.0 * p - 1.0)


def _profiles(d: ImplantDesign, diameter: float, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-widths along the axis: (left edge, right edge, core), in mm; negative = no metal."""
    L, R = d.length_mm, diameter / 2.0
    depth = d.thread_depth * diameter
    core_r = R - depth
    collar_len = d.collar * L
    pitch = d.thread_pitch * L

    # Taper: the core shrinks linearly from taper_from*L to the apex.
    s = np.clip((v / L - d.taper_from) / max(1e-6, 1.0 - d.taper_from), 0.0, 1.0)
    core = core_r * (1.0 - d.taper * s)

    # Threads start half a pitch below the collar; the right edge is half a turn behind (a helix seen side-on).
    ramp = np.clip((v - collar_len) / (0.5 * pitch), 0.0, 1.0)
    left = core + depth * ramp * _tooth((v - collar_len) / pitch, d.thread_shape)
    right = core + depth * ramp * _tooth((v - collar_len) / pitch + 0.5, d.thread_shape)
    collar = v < collar_len
    if d.neck == "flared":  # tissue-level shoulder flaring out to ~1.2 R at the top
        top = R * (1.0 + 0.22 * (1.0 - np.clip(v / max(collar_len, 1e-6), 0, 1)) ** 1.5)
    elif d.neck == "beveled":
        top = R * (0.86 + 0.14 * np.clip(v / 0.35, 0.0, 1.0))
    else:
        top = np.full_like(v, R)
    left = np.where(collar, top, left)
    right = np.where(collar, top, right)

    # Apex: scale the last few millimetres of the silhouette.
    end_r = core_r * (1.0 - d.taper)
    if d.apex == "round":
        a = end_r
        t = np.clip((v - (L - a)) / a, 0.0, 1.0)
        f = np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))
    elif d.apex == "pointed":
        a = 1.6 * end_r
        t = np.clip((v - (L - a)) / a, 0.0, 1.0)
        f = 1.0 - 0.8 * t**1.3
    else:  # flat, with a small chamfer
        a = 0.35 * end_r
        t = np.clip((v - (L - a)) / a, 0.0, 1.0)
        f = 1.0 - 0.3 * t * t
    inside = (v >= 0.0) & (v <= L)
    return (np.where(inside, left * f, -1.0), np.where(inside, right * f, -1.0), np.where(inside, core * f, -1.0))


def _smooth_noise(rng: np.random.Generator, side: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise with features about side/cells pixels wide."""
    small = rng.standard_normal((cells, cells), dtype=np.float32)
    big = Image.fromarray(small).resize((side, side), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32)


def _soft(half_width: np.ndarray, distance: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage of a band |distance| <= half_width (mm); zero where the shape is absent (<= 0)."""
    return np.clip((half_width - distance) * px + 0.5, 0.0, 1.0) * (half_width > 0)


def _draw_tooth(rng: np.random.Generator, u, v, img, bone_cover, tu: float, tw: float, px: float, window) -> None:
    """Paint one neighbouring tooth in place: root in a dark ligament space, enamel-capped crown, pulp canal."""
    tv = rng.uniform(-1.6, -0.4)  # cemento-enamel junction, just above the bone crest
    root_len = rng.uniform(10.0, 13.0)
    lean = rng.uniform(-0.08, 0.08)
    w = window(tu - tw - 1.6 - abs(lean) * 7.5, tu + tw + 1.6 + abs(lean) * 7.5, tv - 7.0, tv + root_len + 0.5)
    u, v, img, bone_cover = u[w], v[w], img[w], bone_cover[w]
    au = np.abs(u - tu - lean * (v - tv))
    t = np.clip((v - tv) / root_len, 0.0, 1.0)
    root_hw = np.where((v >= tv) & (v <= tv + root_len), tw * (1.0 - t**1.8), -1.0)
    ct = np.clip((tv - v) / 6.5, 0.0, 1.0)  # 0 at the junction, 1 at the occlusal surface
    bulge = tw + 1.0 * np.sqrt(np.clip(ct / 0.35, 0.0, 1.0))
    crown_hw = np.where(v < tv, bulge * np.sqrt(np.clip(1.0 - np.clip((ct - 0.35) / 0.65, 0, 1) ** 4, 0, 1)), -1.0)
    tooth = _soft(np.maximum(root_hw, crown_hw), au, px)
    # Enamel: the crown minus a shorter, narrower dentin core, so it thins out towards the junction.
    ci = np.clip((tv - v) / 5.2, 0.0, 1.0)
    core_hw = (bulge - 0.25 - 0.8 * ci) * np.sqrt(np.clip(1.0 - np.clip((ci - 0.35) / 0.65, 0, 1) ** 4, 0, 1))
    enamel = (tooth - _soft(core_hw, au, px)) * (v < tv)
    pulp_hw = np.where(v < tv, 0.4 * tw * np.sqrt(np.clip(1.0 - (ci / 0.4) ** 2, 0, 1)), 0.3 + 0.2 * (1.0 - t))
    pulp = _soft(pulp_hw * (v < tv + root_len * 0.95), au, px)
    ligament = _soft(root_hw + 0.25, au, px) - tooth  # thin dark gap around the root
    dura = _soft(root_hw + 0.5, au, px) - tooth - ligament  # bright socket wall
    img += (0.06 * dura - 0.08 * ligament) * bone_cover
    img += (0.52 - img) * tooth * 0.9 + 0.18 * enamel - 0.13 * pulp


def _draw_implant(d: ImplantDesign, diameter: float, u, v, img, abut_h: float, px: float) -> None:
    """Paint abutment and implant body in place: bright metal, threaded edges, hollow connection."""
    L, R = d.length_mm, diameter / 2.0
    au = np.abs(u)
    # Abutment post above the platform, with a rounded top.
    at = np.clip(-v / abut_h, 0.0, 1.0)  # 0 at the platform, 1 at the top
    base = (0.72 if d.neck == "flared" else 0.62) * R
    narrow = 0.35 if d.abutment == "conical" else 0.08
    abut_hw = base * (1.0 - narrow * at) * np.sqrt(np.clip((1.0 - at) / 0.08, 0.0, 1.0))
    abut_hw = np.where((v < 0.0) & (v > -abut_h), abut_hw, -1.0)
    img += (0.86 - img) * _soft(abut_hw, au, px)

    # Body: outer profile per side, brighter where the projected metal is thicker.
    left, right, core = _profiles(d, diameter, v)
    cover = _soft(np.where(u < 0, left, right), au, px)
    metal = 0.8 + 0.12 * np.sqrt(np.clip(1.0 - (u / np.maximum(core, 1e-3)) ** 2, 0.0, 1.0))
    # Faint slanted thread lines across the body (the far side of the helix).
    collar_len, pitch = d.collar * L, d.thread_pitch * L
    threaded = (v > collar_len) & (v < L)
    metal -= 0.05 * threaded * _tooth((v - collar_len) / pitch + 0.25 + u / (np.pi * R), d.thread_shape)
    # The hollow internal connection lets more radiation through.
    conn_depth, conn_hw, shrink = {
        "conical": (0.28 * L, 0.42 * R, 0.45),
        "hex": (0.15 * L, 0.55 * R, 0.1),
        "morse": (0.45 * L, 0.3 * R, 0.45),
    }[d.connection]
    ct = np.clip(v / conn_depth, 0.0, 1.0)
    metal -= 0.14 * _soft(conn_hw * (1.0 - shrink * ct), au, px) * (v >= 0) * (v < conn_depth)
    if d.apical_hole:
        cover *= 1.0 - 0.75 * _soft(0.28 * R, np.hypot(u, v - 0.78 * L), px)
    img += (metal - img) * cover


def render(design: ImplantDesign, diameter_mm: float, seed: int, side: int = 384) -> Image.Image:
    """One grayscale radiograph-like image (bright metal on dark bone, noise, blur, slight rotation).

    Deterministic: the same (design, diameter_mm, seed, side) always gives the same pixels.
    """
    rng = np.random.default_rng(seed)
    L, R = design.length_mm, diameter_mm / 2.0
    ppm = side / FIELD_MM * rng.uniform(0.92, 1.08)  # pixels per mm, i.e. scale jitter
    angle = np.deg2rad(rng.uniform(-8.0, 8.0))
    # The image centre falls a bit above mid-implant, leaving room for the abutment and crown.
    v_centre = L / 2.0 - 2.5 + rng.uniform(-0.8, 0.8)
    u_centre = rng.uniform(-1.0, 1.0)

    # Pixel grid -> implant frame (mm).
    ys, xs = np.ogrid[0:side, 0:side]
    dx = (xs.astype(np.float32) - side / 2.0) / ppm
    dy = (ys.astype(np.float32) - side / 2.0) / ppm
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = c * dx + s * dy + u_centre
    v = -s * dx + c * dy + v_centre

    def window(u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice]:
        """Pixel rows/columns covering an implant-frame box, so each part is drawn only where it can be."""
        cu, cv = np.array([u0, u1, u0, u1]) - u_centre, np.array([v0, v0, v1, v1]) - v_centre
        x = (c * cu - s * cv) * ppm + side / 2.0
        y = (s * cu + c * cv) * ppm + side / 2.0
        y0, y1 = int(np.clip(np.floor(y.min()) - 2, 0, side)), int(np.clip(np.ceil(y.max()) + 3, 0, side))
        x0, x1 = int(np.clip(np.floor(x.min()) - 2, 0, side)), int(np.clip(np.ceil(x.max()) + 3, 0, side))
        return slice(y0, y1), slice(x0, x1)

    # Bone: mid grey with blotchy and trabecular texture; above a wavy crest near the platform only soft tissue.
    bone = 0.36 + sum(a * _smooth_noise(rng, side, n) for a, n in ((0.05, 6), (0.035, 36), (0.025, 90)))
    crest = rng.uniform(-0.3, 0.9) + 0.5 * np.sin(u / rng.uniform(2.5, 5.0) + rng.uniform(0, 6.3))
    bone_cover = np.clip((v - crest) / 0.8 + 0.5, 0.0, 1.0)
    img = 0.13 + (bone - 0.13) * bone_cover + 0.05 * (v / FIELD_MM)  # slightly denser towards the apex

    # Neighbouring teeth, each side present most of the time.
    for sign in (-1.0, 1.0):
        if rng.random() < 0.2:
            continue
        tw = rng.uniform(2.1, 2.8)  # root half-width at the cemento-enamel junction
        tu = sign * (R + rng.uniform(1.8, 3.0) + tw)
        _draw_tooth(rng, u, v, img, bone_cover, tu, tw, ppm, window)

    # Optional crown (porcelain, semi-opaque) over the abutment.
    abut_h = rng.uniform(3.5, 4.5)
    if rng.random() < 0.3:
        top = -abut_h - 1.8
        w = window(-R - 3.0, R + 3.0, top - 0.5, 0.0)
        cu, cv = u[w], v[w]
        ct = np.clip((cv - top) / (abut_h + 1.8), 0.0, 1.0)
        profile = (R + 2.2) * np.sqrt(np.clip(ct * 1.6, 0, 1)) * (1 - 0.6 * ct**3)  # dome narrowing to the post
        crown_hw = np.where((cv > top) & (cv < -0.2), profile, -1.0)
        img[w] += (0.7 - img[w]) * _soft(crown_hw, np.abs(cu), ppm) * 0.8

    w = window(-1.3 * R, 1.3 * R, -abut_h - 0.5, L + 0.5)
    _draw_implant(design, diameter_mm, u[w], v[w], img[w], abut_h, ppm)

    # Exposure: brightness/contrast/gamma jitter, quantum noise, detector blur, then fine grain.
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    img = img * rng.uniform(0.88, 1.1) + rng.uniform(-0.05, 0.05)
    img += rng.standard_normal((side, side), dtype=np.float32) * 0.035
    out = Image.fromarray(np.clip(img * 255.0, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 1.9) * side / 384.0))
    grain = rng.standard_normal((side, side), dtype=np.float32) * 3.0
    return Image.fromarray(np.clip(np.asarray(out, dtype=np.float32) + grain, 0, 255).astype(np.uint8))  # uint8 -> "L"


def demo_filename(design: ImplantDesign, diameter_mm: float, n: int) -> str:
    """The convention name, e.g. NOBEL_REPLACE_4.3mm_01.png."""
    return f"{design.manufacturer_token}_{design.model}_{diameter_mm:.1f}mm_{n:02d}.png"


def demo_files(per_diameter: int = 2, seed: int = 0) -> list[tuple[str, bytes]]:
    """(file name, PNG bytes) pairs named MANUFACTURER_MODEL_DIAMETERmm_NN.png over the whole catalogue.

    Deterministic for a given (per_diameter, seed): every image gets its own derived seed.
    """
    files = []
    for i, design in enumerate(CATALOGUE):
        for j, diameter in enumerate(design.diameters_mm):
            for n in range(1, per_diameter + 1):
                image_seed = int(np.random.SeedSequence([seed, i, j, n]).generate_state(1)[0])
                buf = io.BytesIO()
                render(design, diameter, image_seed).save(buf, format="PNG")
                files.append((demo_filename(design, diameter, n), buf.getvalue()))
    return files
