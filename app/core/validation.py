"""Checks on client text and metadata, shared by the form fields, the JSON bodies and the CLI.

Every text that can reach the database is refused with ``invalid_text`` when it holds a control
character (Unicode category Cc, U+0000-U+001F and U+007F-U+009F) or a lone surrogate (Cs, which
no database can encode): Postgres refuses NUL outright, and the rest only hide in logs and
screens. Metadata is a JSON object of at most ``MAX_METADATA_BYTES`` (compact UTF-8 JSON) nested
at most ``MAX_METADATA_DEPTH`` levels, with finite numbers; parsing it never recurses past
Python's limit unchecked.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32
# Metadata as sent in a form may be pretty-printed; anything this long is refused unparsed.
MAX_METADATA_TEXT = 4 * MAX_METADATA_BYTES

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class InvalidValue(ValueError):
    """A client value refused with a stable error code (raised inside pydantic validators) (``invalid_text``, ``invalid_metadata``, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def control_character(text: str) -> str | None:
    """Where the first control character or lone surrogate of ``text`` is, or None."""
    found = _CONTROL.search(text)
    return None if found is None else f"U+{ord(found.group()):04X} at position {found.start()}"


def check_text(text: str, what: str = "text") -> str:
    where = control_character(text)
    if where is not None:
        raise InvalidValue("invalid_text", f"{what} must not contain control characters ({where})")
    return text


def check_name(name: str, what: str = "name") -> str:
    """Surrounding white space stripped; refused when nothing visible is left."""
    check_text(name, what)
    stripped = name.strip()
    if not any(ch.isprintable() and not ch.isspace() for ch in stripped):
        raise InvalidValue("blank", f"{what} must contain a visible character")
    return stripped


def check_metadata(value: Any) -> dict[str, Any]:
    """A JSON object within the size and depth limits, with finite numbers and clean text."""
    if not isinstance(value, dict):
        raise InvalidValue("invalid_metadata", "metadata must be a JSON object")
    try:
        # C-speed size check first: the walk below then only ever sees a small object.
        compact = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise InvalidValue("invalid_metadata", "metadata numbers must be finite (no NaN or Infinity)") from exc
    except RecursionError as exc:
        raise InvalidValue("invalid_metadata", f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels") from exc
    # surrogatepass: a lone surrogate is counted here and refused as text by the walk below.
    size = len(compact.encode("utf-8", "surrogatepass"))
    if size > MAX_METADATA_BYTES:
        raise InvalidValue("invalid_metadata", f"metadata is limited to {MAX_METADATA_BYTES // 1024} KiB as compact JSON ({size} bytes)")
    stack: list[tuple[Any, int, str]] = [(value, 1, "metadata")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict | list) and depth > MAX_METADATA_DEPTH:
            raise InvalidValue("invalid_metadata", f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(node, dict):
            for key, item in node.items():
                check_text(str(key), f"the key {str(key)[:40]!r} of {path}")
                stack.append((item, depth + 1, f"{path}.{key}"))
        elif isinstance(node, list):
            stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(node))
        elif isinstance(node, str):
            check_text(node, path)
        elif isinstance(node, float) and not math.isfinite(node):
            raise InvalidValue("invalid_metadata", "metadata numbers must be finite (no NaN or Infinity)")
    return value


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """Metadata sent as a JSON text (the enrol form's field); empty means none."""
    if raw is None or raw == "":
        return {}
    if len(raw) > MAX_METADATA_TEXT:
        raise InvalidValue("invalid_metadata", f"metadata is limited to {MAX_METADATA_BYTES // 1024} KiB")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidValue("invalid_metadata", f"metadata must be a JSON object: {exc.msg}") from exc
    except RecursionError as exc:
        raise InvalidValue("invalid_metadata", f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels") from exc
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise InvalidValue("invalid_metadata", f"metadata must be a JSON object: {exc}") from exc
    return check_metadata(value)


def check_instant(moment: datetime) -> datetime:
    """A client's instant in UTC (naive means UTC): SQLite compares datetimes as text, so an
    instant with another offset must be converted before it reaches a query."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:00:00-05:00 is past year 9999 in UTC
        raise InvalidValue("datetime_out_of_range", "the instant lies outside years 1 to 9999 in UTC") from exc


_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:]', re.S)


def deep_member(body: bytes, max_depth: int) -> str | None:
    """The top-level member of a JSON object text under which nesting first passes ``max_depth``.

    For bodies the JSON parser could not even read (it raises RecursionError): names the field
    to blame without parsing. None when the top level is not an object or no member is deep.
    """
    depth, last_string, member = 0, b"", None
    for token in _JSON_TOKEN.finditer(body):
        text = token.group()
        if text in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return member
        elif text in (b"]", b"}"):
            depth -= 1
        elif text == b":":
            if depth == 1:
                try:
                    member = json.loads(last_string)
                except ValueError:
                    member = None
        else:
            last_string = text
    return None


# -- the same checks as pydantic types (JSON bodies, form fields, query parameters) -------------


def _pydantic(check: Any) -> AfterValidator:
    def validate(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except InvalidValue as exc:
            raise PydanticCustomError(exc.code, "{reason}", {"reason": exc.message}) from exc

    return AfterValidator(validate)


TextCheck = _pydantic(check_text)
InstantCheck = _pydantic(check_instant)
NameCheck = _pydantic(check_name)
MetadataCheck = _pydantic(check_metadata)

Metadata = Annotated[dict[str, Any], MetadataCheck]
