"""A line's structured fields as producers make them, in a module that imports nothing of
the server (as ``levels``): ``QuaeroHandler``, ``exec``/``pipe --parse`` and the OTLP
receiver all fit what they were given into the contract's limits here, so that one
oversized field never costs the line (or the whole batch it travels in).

The limits themselves are defined here and ``quaero.attributes`` (the server's validation,
which has the last word) takes them from here.

The rule, OpenTelemetry's own for attribute limits: a string value over
``MAX_VALUE_BYTES`` is cut (at a character boundary, ending in ``…``); a key that is empty
or over ``MAX_KEY`` characters is dropped; attributes are taken in the order given (the
caller puts the ones it values most first) and one that would pass ``MAX_KEYS`` keys or
``MAX_BYTES`` bytes is dropped; a number that is not finite or not a 64-bit integer becomes
its text; any other value becomes ``str(value)``."""
import math
import re

MAX_KEYS = 64
MAX_KEY = 128
MAX_VALUE_BYTES = 4096
MAX_BYTES = 16384   # keys and values of one line, as UTF-8
TRACE_DIGITS = 32
SPAN_DIGITS = 16
CUT = "…"
_HEX = re.compile(r"[0-9a-f]+\Z")


def safe_text(value):
    """``value`` with what neither database stores replaced: NUL by U+FFFD, lone surrogates
    by ``?``."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def value_size(key, value):
    """What one attribute counts towards ``MAX_BYTES`` (``value`` already accepted)."""
    if isinstance(value, str):
        n = len(value.encode("utf-8"))
    else:
        n = 5 if isinstance(value, bool) else 8
    return len(key.encode("utf-8")) + n


def fit_value(value):
    """One attribute value as the contract takes it (see the module doc)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 1 << 63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if not isinstance(value, str):
        value = str(value)
    value = safe_text(value)
    if len(value) * 4 > MAX_VALUE_BYTES:   # else it cannot be over, whatever its characters
        raw = value.encode("utf-8")
        if len(raw) > MAX_VALUE_BYTES:
            keep = MAX_VALUE_BYTES - len(CUT.encode("utf-8"))
            value = raw[:keep].decode("utf-8", "ignore") + CUT
    return value


def fit_attributes(items):
    """A dict within the limits from ``items`` (``(key, value)`` pairs, most valued first;
    a key given twice keeps its first value), or None when nothing is left."""
    out, size = {}, 0
    for key, value in items:
        if len(out) >= MAX_KEYS:
            break
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
            continue
        key = safe_text(key)
        if key in out:
            continue
        value = fit_value(value)
        n = value_size(key, value)
        if size + n > MAX_BYTES:
            continue
        out[key] = value
        size += n
    return out or None


def hex_id(value, digits):
    """``value`` as a trace (32 digits) or span id (16), lowercase, or None when it is not
    one or is all zeros (OpenTelemetry's "no id")."""
    if not isinstance(value, str) or len(value) != digits:
        return None
    value = value.lower()
    if not _HEX.match(value) or value.strip("0") == "":
        return None
    return value
