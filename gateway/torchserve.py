"""TorchServe's inference API, ``/predictions/{model}[/{version}]``: raw or multipart bodies in, JSON out; no
I/O.

As TorchServe takes them: ``curl -T kitten.jpg .../predictions/M`` (the body is the data),
``curl -F data=@kitten.jpg ...`` (multipart: the part named like the model's input, else ``data`` or ``body``,
else the only part, else the only file). A multipart body's other text fields (``-F top_k=3``) go to the
model's handler as its parameters, with the query string's. A model whose single input is BYTES gets the bytes
as one element; any other single-input model takes a JSON body, read as ``/predict`` reads its ``"input"``.

The answer is the model's output, as ``/predict`` gives it (one sample, without the batch dim), or
``{name: value}`` for a model with several outputs. A BYTES output is a string, or the JSON document itself
when its config says ``format = "json"``.
"""

from __future__ import annotations

import io
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser
from werkzeug.http import parse_options_header

from gateway.errors import InvalidArgument, PayloadTooLarge

PART_NAMES = ("data", "body")  # the part names TorchServe's default handlers read
MAX_PARTS = 16


def body_data(
    body: bytes | bytearray, content_type: str | None, input_name: str, limit: int
) -> tuple[bytes | bytearray, dict[str, str]]:
    """Return the data a request carries (the body, or the right part of a multipart body) and the multipart
    body's other text fields, which TorchServe handed a handler beside the data (its parameters here)."""
    mimetype, options = parse_options_header(content_type or "")
    if mimetype != "multipart/form-data":
        return body, {}
    boundary = options.get("boundary", "")
    if not boundary:
        raise InvalidArgument("a multipart/form-data body needs a boundary in its Content-Type")
    parser = MultiPartParser(_in_memory, max_form_memory_size=limit, max_form_parts=MAX_PARTS)
    try:
        form, files = parser.parse(io.BytesIO(body), boundary.encode("latin-1"), len(body))
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"a multipart body of more than {MAX_PARTS} parts or {limit} bytes") from None
    except ValueError as exc:
        raise InvalidArgument(f"the multipart/form-data body cannot be parsed: {exc}") from None
    file_parts: dict[str, bytes] = {}
    for name, storage in files.items(multi=True):
        file_parts.setdefault(name, storage.read())
        storage.close()
    fields: dict[str, str] = {}
    for name, value in form.items(multi=True):
        fields.setdefault(name, value)
    parts = {**{name: value.encode("utf-8") for name, value in fields.items()}, **file_parts}
    chosen = choose_part(parts, set(file_parts), input_name, "the multipart body")
    return parts[chosen], {name: value for name, value in fields.items() if name != chosen}


def choose_part(parts: dict[str, bytes], files: set[str], input_name: str, what: str) -> str:
    """Return which of a request's named parts is the data: the one named like the model's input, else
    ``data`` or ``body``, else the only part, else the only file among text fields."""
    chosen = next((name for name in (input_name, *PART_NAMES) if name in parts), None)
    if chosen is None and len(parts) == 1:
        chosen = next(iter(parts))
    if chosen is None and len(files) == 1:  # one file among text fields: the file is the data
        chosen = next(iter(files))
    if chosen is None:
        names = ", ".join(sorted(parts)) or "none"
        raise InvalidArgument(f"{what} has parts {names}; send one part, or name it {input_name!r} or 'data'")
    return chosen


def _in_memory(*_: Any, **__: Any) -> io.BytesIO:
    """Keep file parts in memory: the body is there already, within the body limit."""
    return io.BytesIO()


def answer(values: dict[str, Any]) -> Any:
    """Return what ``/predictions`` answers: the only output's value, or every output by name."""
    return next(iter(values.values())) if len(values) == 1 else values
