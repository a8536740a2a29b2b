"""Server-Sent Events framing: pure functions, bytes out.

Data is split on every line break the SSE spec knows (CRLF, CR, LF) into several
``data:`` lines, so no payload can start a field of its own. Event names and ids may
not contain line breaks or NUL at all.
"""
import json
import re

_BREAKS = re.compile(r"\r\n|\r|\n")
_FORBIDDEN = re.compile(r"[\r\n\x00]")


def _field(name, value):
    value = str(value)
    if _FORBIDDEN.search(value):
        raise ValueError(f"SSE {name} may not contain CR, LF or NUL")
    return f"{name}: {value}\n"


def format_event(data=None, event=None, id=None, retry=None, comment=None):
    """One SSE event as bytes. ``data`` is a str (split on line breaks) or None."""
    out = []
    if comment is not None:
        out.extend(f": {line}\n" for line in _BREAKS.split(str(comment)))
    if retry is not None:
        out.append(f"retry: {int(retry)}\n")
    if event is not None:
        out.append(_field("event", event))
    if id is not None:
        out.append(_field("id", id))
    if data is not None:
        out.extend(f"data: {line}\n" for line in _BREAKS.split(data))
    out.append("\n")
    return "".join(out).encode("utf-8")


def encode_json(value):
    """Compact JSON as UTF-8 bytes. JSON escapes every control character, so the result
    is a single line that is safe as one ``data:`` field."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_event(event, value, id=None):
    return format_event(encode_json(value).decode("utf-8"), event=event, id=id)


def join_arrays(arrays):
    """Concatenate encoded JSON arrays (``b"[...]"``) without decoding them."""
    if len(arrays) == 1:
        return arrays[0]
    return b"[" + b",".join(a[1:-1] for a in arrays if len(a) > 2) + b"]"


def logs_event_parts(arrays, last_id, total_count, displayed_count, has_more):
    """The ``logs`` event as a list of byte strings around already encoded arrays of lines.

    The arrays are not copied (views of the same bytes go to every stream and out with one
    ``sendmsg``); only the small head and ``meta`` are formatted per connection. Every
    ``logs`` event carries an ``id:``, an empty one too."""
    head = b"event: logs\nid: %d\ndata: {\"logs\":" % last_id
    tail = (b',"meta":{"total_count":%d,"displayed_count":%d,"has_more":%s}}\n\n'
            % (total_count, displayed_count, b"true" if has_more else b"false"))
    if len(arrays) == 1:
        return [head, arrays[0], tail]
    parts = [head + b"["]
    for a in arrays:
        if len(a) > 2:
            if len(parts) > 1:
                parts.append(b",")
            parts.append(memoryview(a)[1:-1])
    parts.append(b"]" + tail)
    return parts


def logs_event(lines_json, last_id, total_count, displayed_count, has_more):
    """The ``logs`` event around an already encoded array of lines, as one byte string."""
    return b"".join(logs_event_parts([lines_json], last_id, total_count, displayed_count,
                                     has_more))
