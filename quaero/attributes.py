"""A line's structured fields (the contract's "Attributes"): what is accepted, how a
value reads as text, and when a value matches an ``attr.KEY=VALUE`` filter. Pure
functions: the API's validation, the live filter (``queries.LineFilter.matches``),
SQLite's registered test and its search documents all use these, so that the database,
the stream and the model agree."""
import math
import re

from .errors import Invalid
# the limits live with the producers' side (no server imports there); validation is here
from .fields import (MAX_BYTES, MAX_KEY, MAX_KEYS, MAX_VALUE_BYTES, SPAN_DIGITS,  # noqa: F401
                     TRACE_DIGITS, safe_text as _text)

MAX_FILTERS = 20
_HEX = re.compile(r"[0-9a-f]+\Z")
# a JSON number, as the filter's text may spell one (float() takes "1_0", " 5", "nan")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")


def clean_attributes(value, where):
    """``value`` (a line's ``attributes`` as sent) as a dict, or None for none; a 400
    (413 past the size limits) naming ``where`` otherwise. Text is kept as sent, but NUL
    and lone surrogates, which neither database stores, are replaced."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Invalid(f"{where} must be an object of keys to strings, numbers or booleans")
    if not value:
        return None
    if len(value) > MAX_KEYS:
        raise Invalid(f"{where} has more than {MAX_KEYS} keys")
    out, size = {}, 0
    for key, v in value.items():   # (types by identity, ASCII without encoding: the hot path)
        if type(key) is not str or not 0 < len(key) <= MAX_KEY:
            raise Invalid(f"{where}: a key must be 1 to {MAX_KEY} characters")
        if key.isascii() and "\x00" not in key:
            size += len(key)
        else:
            key = _text(key)
            size += len(key.encode("utf-8"))
        t = type(v)
        if t is str:
            if v.isascii() and "\x00" not in v:
                n = len(v)
            else:
                v = _text(v)
                n = len(v.encode("utf-8"))
            if n > MAX_VALUE_BYTES:
                raise Invalid(f"{where}[{key!r}] is over {MAX_VALUE_BYTES} bytes")
            size += n
        elif t is bool:
            size += 5
        elif t is int:
            if not -(1 << 63) < v < 1 << 63:
                raise Invalid(f"{where}[{key!r}] is out of range (64-bit integers)")
            size += 8
        elif t is float:
            if not math.isfinite(v):
                raise Invalid(f"{where}[{key!r}] must be a finite number")
            size += 8
        else:
            raise Invalid(f"{where}[{key!r}] must be a string, a number or a boolean")
        if size > MAX_BYTES:
            raise Invalid(f"{where} is over {MAX_BYTES} bytes")
        out[key] = v
    return out


def clean_hex_id(value, where, digits):
    """A trace id (32 hex digits) or span id (16), lowercase, or None; a 400 otherwise. An
    id of all zeros is OpenTelemetry's "none" and is kept as None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) != digits or not _HEX.match(value.lower()):
        raise Invalid(f"{where} must be {digits} hex digits")
    value = value.lower()
    return None if value.strip("0") == "" else value


def value_text(value):
    """How an attribute value reads as text: a string as itself, ``true``/``false``, a
    number in its shortest form (an integral number without a fraction: 500.0 reads
    ``500``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return number_text(value)


def number_text(n):
    if isinstance(n, float) and n.is_integer() and abs(n) < 1e16:
        return str(int(n))
    return repr(n) if isinstance(n, float) else str(n)


def wanted_texts(wanted):
    """The texts an ``attr.KEY=wanted`` filter looks for: ``wanted`` itself, and when it
    spells a number, that number's own text (``500.0`` finds the number 500)."""
    texts = [wanted]
    if _NUMBER.match(wanted):
        n = float(wanted) if any(c in wanted for c in ".eE") else int(wanted)
        if math.isfinite(n) and number_text(n) != wanted:
            texts.append(number_text(n))
    return texts


def wanted_values(wanted):
    """The values an ``attr.KEY=wanted`` filter matches by equality: the text, the number
    it spells, the boolean it names (PostgreSQL's containment test takes each)."""
    values = [wanted]
    if _NUMBER.match(wanted):
        n = float(wanted) if any(c in wanted for c in ".eE") else int(wanted)
        if math.isfinite(n):
            values.append(n)
    elif wanted in ("true", "false"):
        values.append(wanted == "true")
    return values


def value_matches(value, wanted):
    """Whether an attribute ``value`` matches the filter text ``wanted`` (the contract:
    "compared as text", so ``500`` matches the number 500): a string equals it, a boolean
    reads as it, a number equals the number it spells."""
    if value is None:
        return False
    if isinstance(value, str):
        return value == wanted
    if isinstance(value, bool):
        return wanted == ("true" if value else "false")
    if not _NUMBER.match(wanted):
        return False
    return value == (float(wanted) if any(c in wanted for c in ".eE") else int(wanted))


def line_matches(attributes, wanted):
    """Whether a line's ``attributes`` (dict or None) match every ``(key, text)`` pair."""
    if not wanted:
        return True
    if not attributes:
        return False
    return all(value_matches(attributes.get(k), t) for k, t in wanted)


def parse_filters(args):
    """``(attrs, trace_id)`` from a query string: ``attr.KEY=VALUE`` (repeatable, a tuple of
    ``(key, value)`` pairs in order) and ``trace_id=HEX``; a 400 for a bad one."""
    attrs = []
    for name in args:
        if not name.startswith("attr."):
            continue
        key = name[5:]
        if not 0 < len(key) <= MAX_KEY or "\x00" in key:
            raise Invalid(f"attr.KEY: a key must be 1 to {MAX_KEY} characters")
        for wanted in args.getlist(name):
            if len(wanted.encode("utf-8", "replace")) > MAX_VALUE_BYTES or "\x00" in wanted:
                raise Invalid(f"attr.{key}: a value must be at most {MAX_VALUE_BYTES} bytes")
            attrs.append((key, wanted))
    if len(attrs) > MAX_FILTERS:
        raise Invalid(f"at most {MAX_FILTERS} attr. filters")
    trace = args.get("trace_id")
    if trace is not None:
        trace = trace.strip().lower()
        if len(trace) != TRACE_DIGITS or not _HEX.match(trace):
            raise Invalid(f"trace_id must be {TRACE_DIGITS} hex digits")
    return tuple(sorted(set(attrs))), trace
