"""Downloading a file a web form's webhook names by URL, without letting the URL reach anything else.

The URL comes from a request anyone who knows the webhook's address can send, so it is treated as hostile:
- only hosts on an allow-list (`host` for https on 443, `host:port` for that port; plain http only to a
  host listed with its port, as a local test server is);
- every address the host resolves to must be public, unless that very address is listed: a listed name
  that resolves to 127.0.0.1, 10.x or 169.254.169.254 (cloud metadata) is refused;
- the connection goes to the address that was checked (no second lookup that DNS could answer
  differently), with TLS verified against the host's name;
- redirects are followed only to URLs that pass the same checks, at most MAX_REDIRECTS;
- the size limit applies while reading and the timeout to the whole download, not only to each read.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from .errors import RemoteFileError

MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class HostList:
    """The hosts files may come from: (host, port) pairs, port None meaning https on 443."""

    entries: frozenset[tuple[str, int | None]]

    @classmethod
    def parse(cls, text: str) -> HostList:
        """'www.jotform.com, 127.0.0.1:8123, [::1]:8123' -> entries; ValueError names a malformed entry."""
        entries = set()
        for item in (part.strip().lower() for part in text.split(",")):
            if not item:
                continue
            if item.startswith("["):  # [IPv6] or [IPv6]:port
                host, _, rest = item[1:].partition("]")
                port = rest[1:] if rest.startswith(":") else rest
            elif item.count(":") == 1:
                host, _, port = item.partition(":")
            else:  # a name, or a bare IPv6 address
                host, port = item, ""
            if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
                raise ValueError(f"not a host or host:port: {item!r}")
            entries.add((host, int(port) if port else None))
        return cls(frozenset(entries))

    def allows(self, scheme: str, host: str, port: int | None) -> bool:
        host = host.lower()
        if scheme == "https":
            return (host, port or 443) in self.entries or (port in (None, 443) and (host, None) in self.entries)
        # Plain http only where the list names the port: a deliberate entry, as for a test server.
        return scheme == "http" and port is not None and (host, port) in self.entries

    def lists_address(self, address: str) -> bool:
        return any(_same_address(host, address) for host, _ in self.entries)


def _same_address(host: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(address)
    except ValueError:
        return False


def address_is_public(address: str) -> bool:
    """Whether an IP address is one on the public internet: not private, loopback, link-local (cloud
    metadata at 169.254.169.254), multicast, reserved or unspecified, in IPv4 or IPv6 (mapped included)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Download:
    url: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class Fetcher:
    """Downloads under the rules above; `headers` go only to allowed hosts (e.g. a Jotform API key)."""

    hosts: HostList
    max_bytes: int
    timeout_s: float = 10.0
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # may hold an API key

    def fetch(self, url: str) -> Download:
        """The file at `url`; RemoteFileError with a one-sentence reason for anything refused or failed."""
        deadline = time.monotonic() + self.timeout_s
        for _ in range(MAX_REDIRECTS + 1):
            target = self._checked(url)
            status, location, content_type, data = self._get(target, deadline)
            if status in (301, 302, 303, 307, 308):
                if not location:
                    raise RemoteFileError(f"{_shown(url)} redirected without saying where.")
                url = urljoin(url, location)
                continue
            if status != 200:
                raise RemoteFileError(f"{_shown(url)} answered HTTP {status}, not the file.")
            return Download(url, data, content_type)
        raise RemoteFileError(f"{_shown(url)} redirected more than {MAX_REDIRECTS} times.")

    def _checked(self, url: str) -> _Target:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "")
        try:
            port = parts.port
        except ValueError:
            raise RemoteFileError(f"{_shown(url)} is not a valid URL.") from None
        if scheme not in ("http", "https") or not host:
            raise RemoteFileError(f"{_shown(url)} is not an http(s) URL.")
        if parts.username or parts.password:
            raise RemoteFileError(f"{_shown(url)} carries credentials; file URLs must not.")
        if not self.hosts.allows(scheme, host, port):
            raise RemoteFileError(f"{host[:80]} is not an allowed file host (RAIOX_JOTFORM_FILE_HOSTS)"
                                  + (" for plain http" if scheme == "http" else "") + ".")
        port = port or (443 if scheme == "https" else 80)
        address = self._resolve(host, port)
        path = parts.path or "/"
        return _Target(scheme, host, port, address, path + (f"?{parts.query}" if parts.query else ""))

    def _resolve(self, host: str, port: int) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise RemoteFileError(f"The file host {host[:80]} could not be resolved.") from None
        addresses = [info[4][0] for info in infos]
        refused = [a for a in addresses if not address_is_public(a) and not self.hosts.lists_address(a)]
        if refused or not addresses:
            raise RemoteFileError(f"The file host {host[:80]} resolves to a private or local address "
                                  f"({refused[0] if refused else 'none'}), which is not listed.")
        return addresses[0]

    def _get(self, target: _Target, deadline: float) -> tuple[int, str | None, str, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out(target)
        connection = (_PinnedHTTPS if target.scheme == "https" else _PinnedHTTP)(target, timeout=remaining)
        try:
            connection.request("GET", target.path, headers={"User-Agent": "Raiox", "Accept": "image/*, */*",
                                                           **dict(self.headers)})
            response = connection.getresponse()
            if response.status != 200:
                return response.status, response.getheader("Location"), "", b""
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large(target)
            data = bytearray()
            while chunk := response.read1(_CHUNK):
                data += chunk
                if len(data) > self.max_bytes:
                    raise self._too_large(target)
                if time.monotonic() > deadline:
                    raise self._timed_out(target)
            return 200, None, response.getheader("Content-Type", ""), bytes(data)
        except (TimeoutError, socket.timeout):
            raise self._timed_out(target) from None
        except ssl.SSLError as exc:
            raise RemoteFileError(f"The TLS connection to {target.host[:80]} failed ({exc.reason or 'handshake'}).") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteFileError(f"Downloading from {target.host[:80]} failed ({type(exc).__name__}).") from None
        finally:
            connection.close()

    def _timed_out(self, target: _Target) -> RemoteFileError:
        return RemoteFileError(f"The file host {target.host[:80]} did not deliver the file within {self.timeout_s:g} s.")

    def _too_large(self, target: _Target) -> RemoteFileError:
        return RemoteFileError(f"The file from {target.host[:80]} is larger than the limit of "
                               f"{self.max_bytes / 2**20:g} MB (RAIOX_MAX_UPLOAD_MB).")


def _shown(url: str) -> str:
    """A URL in a message: without its query string (a signed link's secret) and cut short."""
    return url.split("?", 1)[0][:160]


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    address: str  # the checked address the connection goes to
    path: str


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: _Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: _Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
