"""The checks a web form's file URL must pass before anything is downloaded, tested on the checks
themselves: no connection is ever opened to a private, link-local or metadata address."""

from __future__ import annotations

import socket

import pytest

from raiox_core.errors import RemoteFileError
from raiox_core.jotform import parse_submission
from raiox_core.remote_files import Fetcher, HostList, address_is_public


@pytest.mark.parametrize("address", ["10.0.0.7", "172.16.3.4", "192.168.1.1", "127.0.0.1", "127.0.0.2",
                                     "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "fd00::1",
                                     "fe80::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "fd00:ec2::254"])
def test_private_local_and_metadata_addresses_are_not_public(address):
    assert not address_is_public(address)


@pytest.mark.parametrize("address", ["104.16.0.1", "8.8.8.8", "2606:4700::6810:84e5"])
def test_internet_addresses_are_public(address):
    assert address_is_public(address)


def test_the_host_list():
    hosts = HostList.parse(" www.jotform.com, 127.0.0.1:8123 ,[::1]:9000,, EU.jotform.com ")
    assert hosts.allows("https", "www.jotform.com", None) and hosts.allows("https", "WWW.JOTFORM.COM", 443)
    assert hosts.allows("https", "eu.jotform.com", None)
    assert not hosts.allows("https", "www.jotform.com", 8443)  # a listed name means port 443
    assert not hosts.allows("http", "www.jotform.com", None)  # plain http only where a port is listed
    assert hosts.allows("http", "127.0.0.1", 8123) and not hosts.allows("http", "127.0.0.1", 8124)
    assert hosts.allows("http", "::1", 9000)
    assert not hosts.allows("https", "files.jotform.com.evil.example", None)
    assert not hosts.allows("ftp", "www.jotform.com", None)
    assert hosts.lists_address("127.0.0.1") and not hosts.lists_address("127.0.0.2")
    with pytest.raises(ValueError):
        HostList.parse("host:notaport")


def _refusal(fetcher: Fetcher, url: str) -> str:
    with pytest.raises(RemoteFileError) as refused:
        fetcher.fetch(url)
    return str(refused.value)


def test_urls_refused_before_any_connection(monkeypatch):
    def no_connection(*args, **kwargs):
        raise AssertionError("a connection was opened")

    monkeypatch.setattr(socket, "create_connection", no_connection)
    fetcher = Fetcher(HostList.parse("www.jotform.com,localhost:8123,10.1.2.3:80"), max_bytes=1000)
    assert "not an allowed file host" in _refusal(fetcher, "https://169.254.169.254/latest/meta-data/")
    assert "not an allowed file host" in _refusal(fetcher, "http://www.jotform.com/uploads/x.png")
    assert "not an http(s) URL" in _refusal(fetcher, "file:///etc/passwd")
    assert "carries credentials" in _refusal(fetcher, "https://user:pw@www.jotform.com/x.png")
    # A listed name that resolves to a loopback address it does not list: refused (DNS could say anything).
    assert "resolves to a private or local address (127.0.0.1)" in _refusal(fetcher, "http://localhost:8123/x.png")


def test_a_listed_name_resolving_to_a_private_address_is_refused(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                                                    ("169.254.169.254", 443))])
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("a connection was opened"))
    fetcher = Fetcher(HostList.parse("www.jotform.com"), max_bytes=1000)
    assert "169.254.169.254" in _refusal(fetcher, "https://www.jotform.com/uploads/x.png")


def test_a_submission_keeps_only_ids_and_upload_urls():
    import json

    from tests.api.file_host import PERSONAL, jotform_fields

    fields = jotform_fields("231", "586", {"q5_xray": ["https://www.jotform.com/uploads/c/231/586/maria.png",
                                                       "https://www.jotform.com/uploads/c/231/586/b.png"],
                                           "q8_other": ["not a url"]})
    submission = parse_submission(fields)
    assert (submission.form_id, submission.submission_id) == ("231", "586")
    assert [u.name for u in submission.uploads] == ["q5_xray[1]", "q5_xray[2]"]
    kept = json.dumps([submission.form_id, submission.submission_id, [u.name for u in submission.uploads]])
    assert not any(p in kept for p in PERSONAL)
