"""The MANUFACTURER_MODEL_DIAMETER[_NN].ext file-name convention and the manufacturer vocabulary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from .errors import NamingError

# File-name token -> canonical manufacturer name. Extend here; unknown tokens are kept, title-cased.
MANUFACTURERS: dict[str, str] = {
    "NOBEL": "Nobel Biocare",
    "NOBELBIOCARE": "Nobel Biocare",
    "STRAUMANN": "Straumann",
    "NEODENT": "Neodent",
    "ZIMMER": "Zimmer",
    "ZIMMERBIOMET": "Zimmer",
    "DENTSPLY": "Dentsply Sirona",
    "ASTRA": "Dentsply Sirona",
    "BIOHORIZONS": "BioHorizons",
    "OSSTEM": "Osstem",
    "MEGAGEN": "MegaGen",
}

_NAME = re.compile(
    r"^(?P<manufacturer>[A-Za-z][A-Za-z0-9-]*)_(?P<model>[A-Za-z0-9][A-Za-z0-9-]*)"
    r"_(?P<diameter>\d{1,2}(?:[.,]\d{1,2})?)\s*(?:mm)?(?:_(?P<n>\d+))?$",
    re.IGNORECASE,
)
# An extension starts with a letter, so the ".3mm" of "4.3mm" is never taken for one.
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")
MIN_DIAMETER_MM, MAX_DIAMETER_MM = 2.0, 8.0


@dataclass(frozen=True)
class Labels:
    """What a reference is: canonical manufacturer, model and diameter in millimetres."""

    manufacturer: str
    model: str
    diameter_mm: float


def canonical_manufacturer(name: str) -> str:
    """Map a token or a free-text name to the canonical name ("nobel" -> "Nobel Biocare")."""
    cleaned = name.strip()
    key = re.sub(r"[^A-Za-z0-9]", "", cleaned).upper()
    if key in MANUFACTURERS:
        return MANUFACTURERS[key]
    for canonical in MANUFACTURERS.values():
        if key == re.sub(r"[^A-Za-z0-9]", "", canonical).upper():
            return canonical
    return cleaned if not cleaned.isupper() else cleaned.title()


def check_diameter(diameter_mm: float) -> float:
    """Refuse diameters outside what dental implants come in."""
    if not MIN_DIAMETER_MM <= diameter_mm <= MAX_DIAMETER_MM:
        raise NamingError(
            f"A diameter of {diameter_mm:g} mm is outside the {MIN_DIAMETER_MM:g}-{MAX_DIAMETER_MM:g} mm range of dental implants."
        )
    return round(float(diameter_mm), 2)


def _unconventional(name: str) -> str:
    return f"the name {name[:80]!r} does not follow MANUFACTURER_MODEL_DIAMETER_NN (e.g. NOBEL_REPLACE_4.3mm_01.jpg)"


def parse_filename(filename: str) -> Labels:
    """Labels from `NOBEL_REPLACE_4.3mm_01.jpg`; NamingError when the name does not follow the convention."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    m = _NAME.match(_EXTENSION.sub("", name))
    if not m:
        clause = _unconventional(name)
        raise NamingError(f"{clause[0].upper()}{clause[1:]}; give the labels explicitly.")
    diameter = check_diameter(float(m["diameter"].replace(",", ".")))
    return Labels(canonical_manufacturer(m["manufacturer"]), m["model"].upper(), diameter)


def resolve_labels(
    filename: str,
    manufacturer: str | None = None,
    model: str | None = None,
    diameter_mm: float | None = None,
) -> Labels:
    """Explicit labels override those parsed from the name; with all three given the name is not needed."""
    if manufacturer and model and diameter_mm is not None:
        return Labels(canonical_manufacturer(manufacturer), model.strip().upper(), check_diameter(diameter_mm))
    given = {"manufacturer": manufacturer, "model": model, "diameter": diameter_mm}
    missing = [label for label, value in given.items() if value in (None, "")]
    try:
        parsed = parse_filename(filename)
    except NamingError:
        if len(missing) == len(given):
            raise
        # Some labels were given: say which are still needed, not only that the name does not parse.
        wanted = " and the ".join(missing)
        raise NamingError(f"Give the {wanted} too: {_unconventional(PurePosixPath(filename).name)}, so it cannot "
                          f"supply {'it' if len(missing) == 1 else 'them'}.") from None
    return Labels(
        canonical_manufacturer(manufacturer) if manufacturer else parsed.manufacturer,
        model.strip().upper() if model else parsed.model,
        check_diameter(diameter_mm) if diameter_mm is not None else parsed.diameter_mm,
    )
