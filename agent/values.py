"""Single JSON values of an event, and why a bad one is rejected.

The checks the decoder runs on each field (labels, numbers, text, the JSON itself) raise
:class:`Bad` with a reason from ``REJECT_REASONS``, the values of the
``embmon_events_rejected_total{reason}`` label, and a short detail for the log.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Literal, get_args

import orjson

__all__ = [
    "MAX_NAME_CHARS",
    "NUMBER_TYPES",
    "REJECT_REASONS",
    "Bad",
    "RejectReason",
    "bounded",
    "kind",
    "label",
    "loads",
    "name",
    "not_numbers",
    "short",
    "tokenize",
    "wrong_dimension",
]

RejectReason = Literal[
    "invalid_json",
    "not_object",
    "missing_embedding",
    "wrong_dimension",
    "non_finite",
    "wrong_type",
    "oversized",
    "bad_timestamp",
    "future_timestamp",
    "bad_name",
]
REJECT_REASONS: tuple[RejectReason, ...] = get_args(RejectReason)

NUMBER_TYPES = frozenset({int, float})
MAX_NAME_CHARS = 128
"""Longest model, segment value or class label: each becomes a label value and a file name."""
_MAX_INT_DIGITS = 19  # longer integers are read as floats: huge ones become inf, never an error
_DETAIL_CHARS = 80
_WORD = re.compile(r"[^\W_]+")
_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of ``text``; letters with accents stay inside their word.

    NFC first, so a decomposed "está" (``a`` + combining accent) is not split at the accent.

    >>> tokenize("La casa ESTÁ aquí, ¿no? 3 niños")
    ['la', 'casa', 'está', 'aquí', 'no', '3', 'niños']
    """
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


class Bad(Exception):
    """This record is rejected for ``reason`` (control flow inside ``agent.decode.Decoder``)."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: RejectReason = reason
        self.detail = detail
        self.event_id: str | None = None


def label(path: str, value: object) -> str | None:
    """A class, id or segment value: strings as they are, integers and booleans as text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise Bad("wrong_type", f"{path} must be a string or an integer, not {kind(value)}")


def name(path: str, value: object) -> str | None:
    """A model, segment value or class label: a :func:`label` of printable characters, short.

    >>> name("model", "news"), name("target", 3)
    ('news', '3')
    >>> name("model", "x" * 300)
    Traceback (most recent call last):
    agent.values.Bad: model has 300 characters, at most 128
    """
    text = label(path, value)
    return None if text is None else bounded(path, text)


def bounded(path: str, text: str) -> str:
    """``text`` if it is a usable name: at most ``MAX_NAME_CHARS``, all printable."""
    if len(text) > MAX_NAME_CHARS:
        raise Bad("bad_name", f"{path} has {len(text)} characters, at most {MAX_NAME_CHARS}")
    if not text.isprintable():
        raise Bad("bad_name", f"{path} holds control or unprintable characters")
    return text


def not_numbers(vec: list[object]) -> Bad:
    """The reject for a vector with a non-number; ``null`` is how many JSON encoders write NaN."""
    j, x = next((j, x) for j, x in enumerate(vec) if type(x) not in NUMBER_TYPES)
    if x is None:
        return Bad("non_finite", f"embedding[{j}] is null (NaN written by a JSON encoder?)")
    return Bad("wrong_type", f"embedding[{j}] is {kind(x)}, not a number")


def loads(raw: bytes) -> object:
    """Parse one event with orjson, re-reading what it refuses with ``json``.

    orjson refuses the NaN and Infinity literals that Python's ``json`` writes, and numbers
    that overflow a double (``1e999``, a 400-digit integer); re-read, such an event is rejected
    as ``non_finite`` or ``bad_timestamp``, which tells its producer what is wrong. What orjson
    refuses for being no UTF-8 (raw bytes, or a ``\\ud800`` escape of half a character) stays
    refused: such text could not be written to any output. Only bad records pay for this.

    A detail says what is wrong and where (orjson's message is fixed text, its position a
    number), never which bytes: it is logged and sent in dead-letter headers.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        refused = exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Bad("invalid_json", f"not UTF-8: invalid byte at {exc.start} of {len(raw)}") from None
    try:
        obj = json.loads(text, parse_int=_integer)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")  # lone surrogates fail here
    except RecursionError:
        raise Bad("invalid_json", "nested too deep to parse") from None
    except UnicodeEncodeError:
        raise Bad("invalid_json", "a string holds half a UTF-16 surrogate pair") from None
    except ValueError:
        raise Bad("invalid_json", short(f"not JSON: {refused.msg} at char {refused.pos}")) from None
    return obj


def _integer(digits: str) -> int | float:
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else float(digits)


def kind(value: object) -> str:
    """JSON's name for the type of a decoded value, for reject details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _KINDS.get(type(value), type(value).__name__)


def wrong_dimension(found: int, dim: int) -> Bad:
    return Bad("wrong_dimension", f"embedding has {found} values, the reference has {dim}")


def short(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"
