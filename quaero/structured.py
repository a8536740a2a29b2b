"""A line of program output that is a structured record (``exec``/``pipe --parse``): a
JSON object, or logfmt's ``key=value`` pairs. Pure functions of the line's text; nothing
of the server (the client side uses them).

The message is the record's ``msg`` field, else ``message``, else ``event`` (structlog's
name), else the whole line as printed. The level is its ``level`` (else ``severity``,
else ``lvl``) field when that names one of the four levels (``WARNING``, ``err``,
``fatal``...; in JSON also pino's and bunyan's numbers: below 30 debug, below 40 info,
below 50 warn, up to 60 error), else the line's level as a plain line's is read. A
``trace_id``/``span_id`` (or ``traceId``/``spanId``) field that is a valid id fills the
line's own. The fields that were not used so are the attributes: nested objects and
arrays as their compact JSON text, nulls left out, fitted to the limits as
``quaero.fields`` says. A line that is not such a record stays a plain line.

logfmt here: pairs separated by spaces; a key is a run of characters other than space,
``=`` and ``"``; ``key=value`` where the value runs to the next space, or
``key="quoted \\" value"`` (JSON's escapes), or ``key=`` (empty); a bare ``key`` is
``true``. So that ordinary text is not taken for logfmt, a line is logfmt only when its
first word is a ``key=value`` pair and it has no more bare keys than pairs."""
import json
import re

from .fields import SPAN_DIGITS, TRACE_DIGITS, fit_attributes, hex_id
from .levels import DEBUG, ERROR, INFO, LEVEL_NAMES, WARN, line_level, word_level

MESSAGE_KEYS = ("msg", "message", "event")
LEVEL_KEYS = ("level", "severity", "lvl")
ID_KEYS = (("trace_id", TRACE_DIGITS), ("traceId", TRACE_DIGITS),
           ("span_id", SPAN_DIGITS), ("spanId", SPAN_DIGITS))
_KEY = re.compile(r'[^\s="]+')
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_UNQUOTED = re.compile(r"\S*")
_SPACES = re.compile(r"[ \t]*")


def parse_json(text):
    """The object a line holds, or None when it is not a JSON object."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def parse_logfmt(text):
    """The pairs of a logfmt line as a dict (a bare key: True), or None (see the module
    doc for when a line is logfmt)."""
    fields, pairs, bare, i, n = {}, 0, 0, 0, len(text)
    while True:
        i = _SPACES.match(text, i).end()
        if i >= n:
            break
        m = _KEY.match(text, i)
        if m is None:
            return None
        key, i = m.group(), m.end()
        if i < n and text[i] == "=":
            i += 1
            if i < n and text[i] == '"':
                m = _QUOTED.match(text, i)
                if m is None:
                    return None
                value = _unquote(m.group())
            else:
                m = _UNQUOTED.match(text, i)
                value = m.group()
            i = m.end()
            pairs += 1
        elif pairs == 0:
            return None
        else:
            value = True
            bare += 1
        if i < n and text[i] not in " \t":
            return None
        fields[key] = value
    return fields if pairs and bare <= pairs else None


def _unquote(quoted):
    try:
        return json.loads(quoted, strict=False)
    except ValueError:   # an escape JSON does not have (\x41, \'): the character itself
        return re.sub(r"\\(.)", r"\1", quoted[1:-1], flags=re.DOTALL)


PARSERS = {"json": parse_json, "logfmt": parse_logfmt}


def structured_line(text, kind, default_level):
    """The line ``text`` as ``POST /api/logs`` takes it (``level``, ``message``, and
    ``attributes``/``trace_id``/``span_id`` when it has them) when it is a ``kind``
    (``json``/``logfmt``) record, else None. ``default_level``: a plain line's."""
    fields = PARSERS[kind](text)
    if fields is None:
        return None
    line = {"message": text}
    for key in MESSAGE_KEYS:
        if fields.get(key) is not None:
            value = fields.pop(key)
            line["message"] = value if isinstance(value, str) else _json_text(value)
            break
    level = None
    for key in LEVEL_KEYS:
        if key in fields:
            level = _level(fields[key])
            if level is not None:
                del fields[key]
            break
    if level is None:
        level = line_level(line["message"], default_level)
    line["level"] = LEVEL_NAMES[level]
    for key, digits in ID_KEYS:
        value = hex_id(fields.get(key), digits)
        if value is not None:
            del fields[key]
            line.setdefault("span_id" if digits == SPAN_DIGITS else "trace_id", value)
    attributes = fit_attributes((key, _json_text(value) if isinstance(value, (dict, list))
                                 else value) for key, value in fields.items()
                                if value is not None)
    if attributes:
        line["attributes"] = attributes
    return line


def _level(value):
    """The level a field's value names, or None."""
    if isinstance(value, str):
        return word_level(value, None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 10 <= value <= 60:
        return DEBUG if value < 30 else INFO if value < 40 else WARN if value < 50 else ERROR
    return None


def _json_text(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
