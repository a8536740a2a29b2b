"""SSE framing is a pure function: exact bytes."""
import json

import pytest

from quaero.streaming.sse import (encode_json, format_event, join_arrays, json_event, logs_event,
                        logs_event_parts)


@pytest.mark.parametrize("data, expected", [
    ("hello", b"data: hello\n\n"),
    ("", b"data: \n\n"),
    ("a\nb", b"data: a\ndata: b\n\n"),
    ("a\rb", b"data: a\ndata: b\n\n"),
    ("a\r\nb", b"data: a\ndata: b\n\n"),
    ("a\n\nevent: evil", b"data: a\ndata: \ndata: event: evil\n\n"),
    ("trailing\n", b"data: trailing\ndata: \n\n"),
    ("caf\u00e9 \u2028", "data: caf\u00e9 \u2028\n\n".encode()),
])
def test_data_is_split_on_every_line_break(data, expected):
    assert format_event(data) == expected


def test_all_fields_in_order():
    assert format_event("x", event="logs", id=42, retry=2000, comment="hi") == (
        b": hi\nretry: 2000\nevent: logs\nid: 42\ndata: x\n\n")


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x00b"])
def test_event_and_id_cannot_carry_line_breaks(bad):
    with pytest.raises(ValueError):
        format_event("x", event=bad)
    with pytest.raises(ValueError):
        format_event("x", id=bad)


@pytest.mark.parametrize("message", [
    "line\nevent: end\ndata: {}", "cr\rid: 999", "crlf\r\nretry: 1", "nul\x00byte",
    "\n\n\n", "</script><img src=x onerror=alert(1)>"])
def test_messages_cannot_inject_fields(message):
    lines = [{"id": 7, "message": message}]
    raw = logs_event(encode_json(lines), 7, 1, 1, False)
    assert raw.count(b"\n\n") == 1 and raw.endswith(b"\n\n")
    fields = raw[:-2].split(b"\n")
    assert fields[0] == b"event: logs" and fields[1] == b"id: 7"
    assert len(fields) == 3 and fields[2].startswith(b"data: ")
    assert b"\r" not in raw and b"\x00" not in raw
    payload = json.loads(fields[2][6:])
    assert payload["logs"][0]["message"] == message


def test_logs_event_exact_bytes():
    raw = logs_event(b'[{"id":1}]', 1, 10, 1, True)
    assert raw == (b'event: logs\nid: 1\n'
                   b'data: {"logs":[{"id":1}],"meta":{"total_count":10,"displayed_count":1,'
                   b'"has_more":true}}\n\n')


def test_empty_logs_event_has_an_id():
    assert logs_event(b"[]", 41, 0, 0, False) == (
        b'event: logs\nid: 41\ndata: {"logs":[],"meta":{"total_count":0,"displayed_count":0,'
        b'"has_more":false}}\n\n')


def test_logs_event_parts_join_arrays_without_copying():
    a, b = encode_json([{"id": 1}]), encode_json([{"id": 2}, {"id": 3}])
    parts = logs_event_parts([a, b"[]", b], 3, 5, 3, False)
    assert any(isinstance(p, memoryview) and p.obj is a for p in parts)
    raw = b"".join(parts)
    assert raw == (b'event: logs\nid: 3\ndata: {"logs":[{"id":1},{"id":2},{"id":3}],'
                   b'"meta":{"total_count":5,"displayed_count":3,"has_more":false}}\n\n')
    assert b"".join(logs_event_parts([a], 1, 1, 1, True)) == logs_event(a, 1, 1, 1, True)


def test_join_arrays():
    assert join_arrays([b"[1,2]"]) == b"[1,2]"
    assert join_arrays([b"[1,2]", b"[3]", b"[]"]) == b"[1,2,3]"
    assert json.loads(join_arrays([encode_json([{"a": "x,]"}]), encode_json([{"b": 1}])])) == [
        {"a": "x,]"}, {"b": 1}]


def test_json_event():
    assert json_event("ping", {"timestamp": "t"}) == b'event: ping\ndata: {"timestamp":"t"}\n\n'
