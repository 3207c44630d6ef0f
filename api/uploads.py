"""Multipart bodies read as they arrive, with the upload limits applied while reading.

Not Starlette's form parser: it spools every file to disk whatever its size and only then lets us look,
so a 2 GB body would be written out before being refused. Here a body whose Content-Length is over the
limits is refused before a byte is read, and a streamed one as soon as a file passes RAIOX_MAX_UPLOAD_MB
or the request passes MAX_FILES; memory stays within MAX_FILES x the per-file limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import python_multipart
from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from .errors import ApiError

MAX_FILES = 20  # files per request
MAX_FIELDS, MAX_FIELD_BYTES = 20, 1024  # the small text fields (k, manufacturer, labels)
_PART_OVERHEAD = 16 * 1024  # boundary and headers of one part, generously
# The refusal closes the connection: otherwise the server would have to read and discard the rest of the body.
_CLOSE = {"Connection": "close"}


@dataclass
class Upload:
    field: str
    filename: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Form:
    files: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def _megabytes(limit: int) -> str:
    return f"{limit / 2**20:g} MB" if limit >= 2**20 else f"{limit:,} bytes"


def _too_large(message: str) -> ApiError:
    return ApiError(413, message, _CLOSE)


class _Reader:
    """python-multipart's callbacks, collecting parts and refusing as soon as a limit is passed."""

    def __init__(self, max_file_bytes: int, max_fields: int, max_field_bytes: int):
        self.max_file_bytes, self.max_fields, self.max_field_bytes = max_file_bytes, max_fields, max_field_bytes
        self.form = Form()
        self._part: Upload | None = None
        self._is_file = False
        self._header, self._value, self._disposition = b"", b"", b""

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in ("on_part_begin", "on_header_field", "on_header_value",
                                                         "on_header_end", "on_headers_finished", "on_part_data",
                                                         "on_part_end")}

    def on_part_begin(self) -> None:
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ApiError(400, "Every multipart part needs a name in its Content-Disposition header.")
        name = options[b"name"].decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if self._is_file and len(self.form.files) >= MAX_FILES:
            raise _too_large(f"At most {MAX_FILES} files per request; send the others in another request.")
        if not self._is_file and len(self.form.fields) >= self.max_fields:
            raise ApiError(400, f"At most {self.max_fields} form fields per request.")
        filename = options.get(b"filename", b"").decode("utf-8", "replace") or "upload"
        self._part = Upload(name, filename)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.data += data[start:end]
        if self._is_file and len(part.data) > self.max_file_bytes:
            raise _too_large(f"{part.filename[:120]} is larger than the limit of {_megabytes(self.max_file_bytes)} "
                             "per file (RAIOX_MAX_UPLOAD_MB).")
        if not self._is_file and len(part.data) > self.max_field_bytes:
            raise ApiError(400, f"The form field {part.field[:40]!r} is longer than {self.max_field_bytes:,} bytes.")

    def on_part_end(self) -> None:
        part, self._part = self._part, None
        if self._is_file:
            self.form.files.append(part)
        else:
            self.form.fields[part.field] = part.data.decode("utf-8", "replace")


async def read_form(request: Request, max_file_bytes: int, *, max_fields: int = MAX_FIELDS,
                    max_field_bytes: int = MAX_FIELD_BYTES) -> Form:
    """The request's multipart form, read chunk by chunk; 400 for a body that is not one, 413 over the limits."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(400, "Send the files as multipart/form-data (curl -F image=@scan.png).")
    declared = request.headers.get("content-length")
    ceiling = MAX_FILES * (max_file_bytes + _PART_OVERHEAD) + max_fields * (max_field_bytes + _PART_OVERHEAD)
    if declared is not None and declared.isdigit() and int(declared) > ceiling:
        raise _too_large(f"The request body of {int(declared):,} bytes is over the limit of {MAX_FILES} files of "
                         f"{_megabytes(max_file_bytes)} each.")
    reader = _Reader(max_file_bytes, max_fields, max_field_bytes)
    parser = python_multipart.MultipartParser(options[b"boundary"], reader.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        raise ApiError(400, "The multipart body is malformed.") from None
    return reader.form


def files_named(form: Form, part: str, allowed_fields: set[str]) -> list[Upload]:
    """The form's files, all sent as `part`, with no field outside `allowed_fields`; 400 when there is none."""
    unknown = sorted(set(form.fields) - allowed_fields) or sorted({f.field for f in form.files} - {part})
    if unknown:
        raise ApiError(422, f"Unknown form field {unknown[0][:40]!r}; this endpoint takes "
                            f"{', '.join([part, *sorted(allowed_fields)])}.")
    if not form.files:
        raise ApiError(400, f"Send at least one file as a form part named {part} (curl -F {part}=@scan.png).")
    return form.files
