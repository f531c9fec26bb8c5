"""Request bodies -> images, within the limits every file cnnctl reads meets.

A body is refused (413) from its Content-Length before any of it is read, or as soon as the
bytes received pass `request_bytes`; a client slower than `request_seconds` is cut off (408).
Uploads stay in memory (never a temporary file); each image's header is checked against
`pixels` and `image_bytes` before it is decoded, by the decoder `predict` uses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass

import numpy as np

from cnnctl.data.images import ImageError, decode_image
from cnnctl.errors import CnnctlError
from cnnctl.escape import safe_text
from cnnctl.limits import EVAL_BATCH, limit, parse_json

MAX_IMAGES = EVAL_BATCH  # images in one request
IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass
class UploadError(Exception):
    """A request the server refuses: its HTTP status and a one-line reason."""

    status: int
    message: str


async def read_body(receive_stream, content_length: str | None) -> bytes:
    """The whole body, bounded in bytes and in time; never more than the limit is kept."""
    allowed = limit("request_bytes")
    if content_length is not None:
        if not content_length.strip().isdigit():
            raise UploadError(400, "Content-Length is not a number")
        if int(content_length) > allowed:
            raise UploadError(413, _too_large(int(content_length), allowed))
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in receive_stream:
            size += len(chunk)
            if size > allowed:
                raise UploadError(413, _too_large(size, allowed))
            chunks.append(chunk)

    seconds = limit("request_seconds")
    try:
        await asyncio.wait_for(read(), seconds)
    except TimeoutError:
        raise UploadError(
            408,
            f"the request body took more than {seconds} s to arrive "
            f"(raise with cnnctl --limit request_seconds=...)",
        ) from None
    return b"".join(chunks)


def _too_large(size: int, allowed: int) -> str:
    return (
        f"the request body is too large ({size:,} > limit {allowed:,} bytes; "
        f"raise with cnnctl --limit request_bytes=...)"
    )


def uploaded_images(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image a body carries: multipart fields named `file`, a JSON
    `{"images": [base64, ...]}`, or one raw image body."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        found = _multipart(content_type, body)
    elif kind == "application/json":
        found = _base64_json(body)
    elif kind.startswith(IMAGE_TYPES):
        found = [("body", body)]
    else:
        raise UploadError(
            415,
            f"unsupported Content-Type {safe_text(kind[:80]) or '(none)'}: send multipart fields "
            'named file, an image/* body, or JSON {"images": [base64, ...]}',
        )
    if not found:
        raise UploadError(422, "the request holds no image")
    return found


def _too_many() -> str:
    return f"more than {MAX_IMAGES} images in one request; send them in several requests"


def _multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart body without a boundary")
    parts: list[dict] = []
    field, value = bytearray(), bytearray()

    def header_end() -> None:
        parts[-1]["headers"][bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def part_begin() -> None:
        if len(parts) >= MAX_IMAGES:  # refused while parsing: a million tiny parts hold no memory
            raise UploadError(413, _too_many())
        parts.append({"headers": {}, "data": bytearray()})

    callbacks = {
        "on_part_begin": part_begin,
        "on_header_field": lambda data, start, end: field.extend(data[start:end]),
        "on_header_value": lambda data, start, end: value.extend(data[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda data, start, end: parts[-1]["data"].extend(data[start:end]),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as error:
        raise UploadError(400, f"damaged multipart body ({str(error)[:120]})") from None
    found = []
    for number, part in enumerate(parts):
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name != "file":
            raise UploadError(
                422,
                f"unexpected form field {safe_text(name[:80])!r}: send images as fields named file",
            )
        filename = disposition.get(b"filename", b"").decode("utf-8", "replace")[:255]
        found.append((filename or f"file[{number}]", bytes(part["data"])))
    return found


def _base64_json(body: bytes) -> list[tuple[str, bytes]]:
    try:
        data = parse_json(body, "the JSON body", CnnctlError)
    except CnnctlError as error:
        raise UploadError(400, error.message) from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise UploadError(422, 'the JSON body must be {"images": ["<base64>", ...]}')
    if len(images) > MAX_IMAGES:
        raise UploadError(413, _too_many())
    found = []
    for number, text in enumerate(images):
        try:
            found.append((f"images[{number}]", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise UploadError(422, f"images[{number}]: not valid base64") from None
    return found


def decode_all(images: list[tuple[str, bytes]], shape: tuple[int, int, int]) -> np.ndarray:
    """Every upload decoded like `predict` decodes a file; the first failure refuses the request:
    not an image 415, too large or damaged 422."""
    arrays = []
    for name, data in images:
        try:
            arrays.append(decode_image(data, *shape))
        except ImageError as error:
            reason = str(error)
            status = 415 if reason.startswith(("not an image", "empty file")) else 422
            raise UploadError(status, f"{safe_text(name[:120])}: {reason}") from None
    return np.stack(arrays)
