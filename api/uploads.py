"""Request bodies under limits: a body-size limit on every route, and a streaming multipart reader
for dataset uploads that writes the file part straight to a temp file, counting bytes.

Neither trusts Content-Length (a chunked body has none, and a client can lie): bytes are counted as
they arrive and the request is refused with 413 at the first byte over the limit, so nothing larger
than the limit is ever held in memory or written to disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import APIError, error_response

MiB = 1024 * 1024
# Room for the multipart framing and small form fields around the file part.
FORM_OVERHEAD = MiB


class BodyTooLarge(HTTPException):
    """Raised from inside ``receive`` (FastAPI lets HTTPException through its body parsing)."""

    def __init__(self, limit: int, what: str = "request body") -> None:
        super().__init__(413, f"{what} exceeds {_human(limit)}")


def _human(size: int) -> str:
    return f"{size / MiB:g} MiB" if size >= MiB else f"{size} bytes"


class BodyLimitMiddleware:
    """Refuses a request body over ``limit_for(scope)`` bytes with 413, while it streams."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # An honest client that is over the limit hears so before sending the body.
            response = error_response(413, "upload_too_large", f"request body exceeds {_human(limit)}")
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


def missing_field(name: str, message: str = "Field required") -> APIError:
    return APIError(422, "validation_error", f"body.{name}: {message}",
                    [{"loc": ["body", name], "msg": message, "type": "missing"}])


@dataclass
class MultipartUpload:
    """A streamed multipart form: the one file part (on disk) and the small text fields."""

    file_path: Path | None = None
    filename: str | None = None
    file_size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


async def read_multipart_upload(
    request: Request,
    dest: Path,
    *,
    file_field: str,
    max_file_bytes: int,
    max_field_bytes: int = 64 * 1024,
) -> MultipartUpload:
    """Stream a multipart/form-data body: part ``file_field`` goes to ``dest`` (at most
    ``max_file_bytes``; 413 beyond), other parts are kept as text (at most ``max_field_bytes`` each).
    Raises APIError 422 for a body that is not multipart (so holds no file) and 400 for a malformed one."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise missing_field(file_field, "Field required (send multipart/form-data)")

    upload = MultipartUpload()
    part: dict[str, Any] = {}
    header_field = bytearray()
    header_value = bytearray()
    out = None

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, name=None, filename=None, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        part["headers"][bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal out
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        part["name"] = name
        if name == file_field:
            if upload.file_path is not None:
                raise APIError(422, "validation_error", f"body.{file_field}: send one file",
                               [{"loc": ["body", file_field], "msg": "send one file", "type": "value_error"}])
            upload.file_path = dest
            upload.filename = filename.decode("utf-8", "replace") if filename is not None else ""
            out = dest.open("wb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        size = end - start
        if part["name"] == file_field:
            upload.file_size += size
            if upload.file_size > max_file_bytes:
                raise BodyTooLarge(max_file_bytes, "upload")
            assert out is not None
            out.write(data[start:end])
        else:
            part["data"].extend(data[start:end])
            if len(part["data"]) > max_field_bytes:
                raise BodyTooLarge(max_field_bytes, f"form field {part['name']!r}")

    def on_part_end() -> None:
        nonlocal out
        if part["name"] == file_field and out is not None:
            out.close()
            out = None
        elif part["name"]:
            upload.fields[part["name"]] = part["data"].decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise APIError(400, "malformed_body", f"malformed multipart body: {e}") from e
    finally:
        if out is not None:
            out.close()
    return upload
