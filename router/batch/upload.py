"""A file upload's multipart/form-data body, parsed in a worker thread. The body is in memory
already (ClientConnectionMiddleware read it within the upload's bound), and parsing tens of
megabytes takes a third of a second: on the event loop that would stall every stream the router
is passing on meanwhile."""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import Field, File, FormParser, parse_options_header

from router.batch.objects import BatchRequestError

MULTIPART = b"multipart/form-data"


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    content: bytes
    purpose: str | None


def parse_upload(body: bytes, content_type: str, max_file_bytes: int) -> Upload:
    """The `file` and `purpose` of an upload; BatchRequestError when the body is not a multipart
    form with a file. A file over `max_file_bytes` is returned with its first max_file_bytes + 1
    bytes, for the caller's 413."""
    kind, options = parse_options_header(content_type)
    if kind != MULTIPART or b"boundary" not in options:
        raise BatchRequestError("the upload must be multipart/form-data with a 'file' and a 'purpose' field", "file")
    fields: dict[bytes, bytes] = {}
    files: list[File] = []

    def on_field(field: Field) -> None:
        fields[field.field_name or b""] = field.value or b""

    parser = FormParser(MULTIPART.decode(), on_field, files.append, boundary=options[b"boundary"],
                        config={"MAX_MEMORY_FILE_SIZE": max_file_bytes + 1})
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise BatchRequestError(f"the multipart/form-data body cannot be read: {exc}", "file") from None
    try:
        uploaded = next((file for file in files if file.field_name == b"file"), None)
        if uploaded is None:
            raise BatchRequestError("the upload has no 'file' part", "file")
        purpose = fields.get(b"purpose")
        return Upload(_text(uploaded.file_name) or "upload.jsonl", _content(uploaded, max_file_bytes),
                      None if purpose is None else _text(purpose))
    finally:
        for file in files:  # one past MAX_MEMORY_FILE_SIZE went to a temporary file
            file.close()


def _content(uploaded: File, max_file_bytes: int) -> bytes:
    file_object = uploaded.file_object
    file_object.seek(0)
    return file_object.read(max_file_bytes + 1)


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", errors="replace")
