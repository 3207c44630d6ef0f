"""What Raiox shows of URLs (no credentials) and of user-supplied text (no terminal control)."""

import pytest

from raiox_core.redact import redact_url, redact_urls_in
from raiox_core.text import printable


@pytest.mark.parametrize("url, shown", [
    ("http://minio:pw@127.0.0.1:9000", "http://***@127.0.0.1:9000"),
    ("https://u:p/a?b#c@host/x", "https://***@host/x"),  # a password holding / ? # does not leak its tail
    ("s3://AKIA:pw@bucket/prefix", "s3://***@bucket/prefix"),
    ("file://u:pw@host/x", "file://***@host/x"),
    ("https://h/k?X-Amz-Signature=abc&X-Amz-Expires=300&X-Amz-Security-Token=t",
     "https://h/k?X-Amz-Signature=***&X-Amz-Expires=300&X-Amz-Security-Token=***"),
    ("https://h/x?token=1&password=2&secret=3&api_key=4&sig=5&page=6",
     "https://h/x?token=***&password=***&secret=***&api_key=***&sig=***&page=6"),
    ("postgresql://raiox:pw@db:5432/raiox?password=x", "postgresql://raiox@db:5432/raiox"),
    ("host=db port=5432 user=raiox password=pw dbname=raiox", "postgresql://raiox@db:5432/raiox"),
    ("http://[::1", "http://[::1"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_urls_in_text():
    line = "url=http://minio:pw@127.0.0.1:9/b/k, then 'https://h/k?X-Amz-Signature=abc'"
    assert redact_urls_in(line) == "url=http://***@127.0.0.1:9/b/k, then 'https://h/k?X-Amz-Signature=***'"


def test_printable_escapes_what_a_terminal_would_obey():
    forged = "scan.png\n#99 Fake Implant\x1b[2K\r\x9b31m\x7f\u2028\u202egnp.exe\u2066"
    assert printable(forged) == "scan.png\\n#99 Fake Implant\\x1b[2K\\r\\x9b31m\\x7f\\u2028\\u202egnp.exe\\u2066"
    assert printable("implante_ñandú_种植体_🦷 <b>x</b>.png") == "implante_ñandú_种植体_🦷 <b>x</b>.png"
