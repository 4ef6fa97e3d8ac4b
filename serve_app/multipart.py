"""Streaming `multipart/form-data`: yields one file field's bytes as they arrive, never buffering it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from daygen.errors import InvalidInput, MalformedBody


def boundary_of(content_type: str) -> bytes:
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise MalformedBody("a multipart/form-data body needs a boundary")
    return boundary


async def file_field(stream: AsyncIterator[bytes], content_type: str, field: str = "file") -> AsyncIterator[bytes]:
    """The bytes of the first part named `field` that carries a filename; other parts are skipped."""
    wanted = field.encode()
    pending: list[bytes] = []
    state = {"header": b"", "headers": {}, "in_file": False, "found": False, "done": False, "field": b""}

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["header"]
        state["field"], state["header"] = b"", b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["in_file"] = not state["found"] and options.get(b"name") == wanted and b"filename" in options
        state["found"] = state["found"] or state["in_file"]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["in_file"]:
            pending.append(data[start:end])

    def on_part_end() -> None:
        if state["in_file"]:
            state["in_file"] = False
            state["done"] = True

    parser = MultipartParser(
        boundary_of(content_type),
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    async for chunk in stream:
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise MalformedBody(f"the multipart body is malformed: {exc}") from None
        for piece in pending:
            yield piece
        pending.clear()
        if state["done"]:
            return
    if not state["done"]:
        if state["found"]:
            raise MalformedBody("the multipart body ended inside the file part")
        raise InvalidInput(
            f"the multipart body has no {field!r} file part",
            details=[{"field": field, "message": "a file part is required"}],
        )
