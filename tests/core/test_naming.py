import pytest

from raiox_core.errors import NamingError
from raiox_core.naming import Labels, canonical_manufacturer, parse_filename, resolve_labels


@pytest.mark.parametrize("name, expected", [
    ("NOBEL_REPLACE_4.3mm_01.jpg", Labels("Nobel Biocare", "REPLACE", 4.3)),
    ("STRAUMANN_BL_3.3mm_09.jpg", Labels("Straumann", "BL", 3.3)),
    ("NEODENT_DRIVE_3.5mm_18.jpg", Labels("Neodent", "DRIVE", 3.5)),
    ("ZIMMER_TSV_4.7mm_25.jpg", Labels("Zimmer", "TSV", 4.7)),
    ("zimmer_tsv_4,7mm.PNG", Labels("Zimmer", "TSV", 4.7)),
    ("folder/STRAUMANN_BLT_4.1_2.dcm", Labels("Straumann", "BLT", 4.1)),
    ("NOBEL_REPLACE_4.3mm", Labels("Nobel Biocare", "REPLACE", 4.3)),
    ("ACME_X1_4mm_01.png", Labels("Acme", "X1", 4.0)),
])
def test_parses_the_convention(name, expected):
    assert parse_filename(name) == expected


@pytest.mark.parametrize("name", ["xray.jpg", "NOBEL_4.3mm.jpg", "NOBEL_REPLACE_big_01.jpg", "", "'; DROP TABLE x; --.png"])
def test_refuses_other_names_with_one_sentence(name):
    with pytest.raises(NamingError) as info:
        parse_filename(name)
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message and "MANUFACTURER_MODEL_DIAMETER" in message


def test_implausible_diameter_is_refused():
    with pytest.raises(NamingError, match="outside"):
        parse_filename("NOBEL_REPLACE_43mm_01.jpg")


def test_explicit_labels_override_and_replace_the_name():
    assert resolve_labels("NOBEL_REPLACE_4.3mm_01.jpg", model="active") == Labels("Nobel Biocare", "ACTIVE", 4.3)
    assert resolve_labels("scan.png", "straumann", "bl", 4.1) == Labels("Straumann", "BL", 4.1)
    with pytest.raises(NamingError):
        resolve_labels("scan.png", manufacturer="Straumann")


def test_vocabulary_maps_tokens_and_full_names():
    assert canonical_manufacturer("NOBEL") == canonical_manufacturer("Nobel Biocare") == "Nobel Biocare"
    assert canonical_manufacturer("zimmer biomet") == "Zimmer"


def test_partly_given_labels_say_which_are_missing():
    with pytest.raises(NamingError, match=r"^Give the model and the diameter too: the name 'scan_0002.png' does not "
                                          r"follow MANUFACTURER_MODEL_DIAMETER_NN .*, so it cannot supply them\.$"):
        resolve_labels("scan_0002.png", manufacturer="zimmer")
    with pytest.raises(NamingError, match=r"^Give the diameter too: .*, so it cannot supply it\.$"):
        resolve_labels("scan_0002.png", manufacturer="zimmer", model="tsv")
