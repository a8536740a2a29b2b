"""Pure parts of the producers' structured fields: fitting attributes to the contract's
limits (``quaero.fields``), JSON and logfmt lines (``quaero.structured``), exact values."""
import logging
import sys

import pytest

from quaero import attributes, fields
from quaero.client import record_fields
from quaero.structured import parse_logfmt, structured_line

INFO, WARN = 20, 30


def test_the_limits_are_one_set_and_fitted_attributes_pass_the_validation():
    assert (attributes.MAX_KEYS, attributes.MAX_BYTES, attributes.MAX_VALUE_BYTES) == (
        fields.MAX_KEYS, fields.MAX_BYTES, fields.MAX_VALUE_BYTES)
    items = [(f"key{i}", "é" * 3000) for i in range(10)] + [(f"n{i}", i) for i in range(100)]
    fitted = fields.fit_attributes(items)
    assert attributes.clean_attributes(fitted, "x") == fitted
    assert list(fitted)[:3] == ["key0", "key1", "key2"] and "key4" not in fitted
    assert fitted["key0"] == "é" * 2046 + "…"      # 4,095 bytes: a character is not split
    assert len(fitted) == 64


@pytest.mark.parametrize("items, expected", [
    ([], None),
    ([("a", 1), ("a", 2)], {"a": 1}),                        # the first, most valued, wins
    ([("", 1), ("k" * 129, 2), ("k" * 128, 3)], {"k" * 128: 3}),
    ([("nan", float("nan")), ("big", 1 << 70), ("t", True), ("x", 1.5)],
     {"nan": "nan", "big": str(1 << 70), "t": True, "x": 1.5}),
    ([("nul", "a\x00b"), ("obj", {"a": 1}), ("none", None)],
     {"nul": "a\ufffdb", "obj": "{'a': 1}", "none": "None"}),
])
def test_fit_attributes(items, expected):
    assert fields.fit_attributes(items) == expected


@pytest.mark.parametrize("value, digits, expected", [
    ("4BF92F3577B34DA6A3CE929D0E0E4736", 32, "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("0" * 32, 32, None), ("00f067aa0ba902b7", 16, "00f067aa0ba902b7"),
    ("00f067aa0ba902b7", 32, None), ("zz" * 8, 16, None), (None, 16, None), (12, 16, None)])
def test_hex_id(value, digits, expected):
    assert fields.hex_id(value, digits) == expected


@pytest.mark.parametrize("text, expected", [
    ("a=1 b=two", {"a": "1", "b": "two"}),
    ('msg="say \\"hi\\"\\n" empty= flag', {"msg": 'say "hi"\n', "empty": "", "flag": True}),
    ("url=http://x/?a=b&c=d", {"url": "http://x/?a=b&c=d"}),
    ('k="a\\x41"', {"k": "ax41"}),                # not a JSON escape: the character itself
    ("  a=1\tb=2  ", {"a": "1", "b": "2"}),
    ("a=1 b c", None),                            # more bare keys than pairs: words
    ("Running with DEBUG=1", None),               # starts with a word
    ('a="unterminated', None), ('a="x"y', None), ("=x", None), ('"a"=1', None),
    ("", None), ("plain", None)])
def test_parse_logfmt(text, expected):
    assert parse_logfmt(text) == expected


@pytest.mark.parametrize("kind, text, expected", [
    ("json", '{"msg": "hi", "level": "ERROR", "a": 1}',
     {"message": "hi", "level": "error", "attributes": {"a": 1}}),
    ("json", '{"message": "m", "severity": "Warning"}', {"message": "m", "level": "warn"}),
    ("json", '{"msg": "m", "lvl": "dbg"}', {"message": "m", "level": "debug"}),
    ("json", '{"msg": "m", "level": 20}', {"message": "m", "level": "debug"}),
    ("json", '{"msg": "m", "level": 40}', {"message": "m", "level": "warn"}),
    ("json", '{"msg": "m", "level": 3}', {"message": "m", "level": "warn",
                                           "attributes": {"level": 3}}),
    ("json", '{"msg": "ERROR: m", "level": "verbose"}',
     {"message": "ERROR: m", "level": "error", "attributes": {"level": "verbose"}}),
    ("json", '{"msg": {"k": [1]}, "x": null}', {"message": '{"k":[1]}', "level": "warn"}),
    ("json", '{"a": 1}', {"message": '{"a": 1}', "level": "warn", "attributes": {"a": 1}}),
    ("json", '{"msg": "m", "traceId": "4BF92F3577B34DA6A3CE929D0E0E4736", "spanId": "0"}',
     {"message": "m", "level": "warn", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
      "attributes": {"spanId": "0"}}),
    ("json", '{"msg": "m", "n": NaN, "big": 123456789012345678901234567890}',
     {"message": "m", "level": "warn",
      "attributes": {"n": "nan", "big": "123456789012345678901234567890"}}),
    ("json", "[1]", None), ("json", "{", None), ("json", "plain", None),
    ("logfmt", "level=info msg=started port=80",
     {"message": "started", "level": "info", "attributes": {"port": "80"}}),
    ("logfmt", "plain words", None),
])
def test_structured_line(kind, text, expected):
    assert structured_line(text, kind, WARN) == expected


def test_record_fields_are_the_extra_fields():
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no")

    record = logging.LogRecord("app", logging.INFO, __file__, 1, "m %s", ("x",), None)
    record.__dict__.update({"user.id": 42, "when": Unprintable(), "_hidden": 1, "none": None,
                            "span_id": "00F067AA0BA902B7", "otelTraceID": "0" * 32})
    record.message, record.asctime = "m x", "now"   # set by formatters: not extra
    assert record_fields(record) == {"span_id": "00f067aa0ba902b7",
                                     "attributes": {"user.id": 42, "otelTraceID": "0" * 32}}
    try:
        raise OSError("x")
    except OSError:
        failed = logging.LogRecord("app", logging.ERROR, __file__, 1, "e", (), sys.exc_info())
    assert record_fields(failed) == {"attributes": {"exception.type": "OSError"}}
    assert record_fields(logging.LogRecord("a", 20, "", 0, "", (), None)) == {}
