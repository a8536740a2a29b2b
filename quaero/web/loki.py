"""The Loki push API, ``POST /loki/api/v1/push``, as Promtail, Grafana Alloy, Fluent Bit,
Vector, Docker's Loki driver and ``python-logging-loki`` send it: JSON (gzip or not) or
snappy-compressed protobuf (``logproto.PushRequest``).

Each stream's labels become its lines' attributes; the first of the labels
``service_name``, ``job``, ``app`` is the source; a ``level``, ``detected_level`` or
``severity`` label sets the level (else info); a ``quaero_job_id`` label puts the lines in
that job. An entry's structured metadata joins its attributes. Every line goes through
``POST /api/logs``'s validation and write path, with its all-or-nothing answer: ``204``
once stored, or a 4xx naming the bad line and nothing stored. Auth: the token rule of
``/api`` (``web.auth``)."""
import hashlib
import re
from datetime import datetime, timedelta, timezone

import cramjam
from flask import Blueprint, Response, current_app, request
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import DecodeError

from ..errors import Invalid, TooLarge, Unsupported
from ..levels import word_level_name
from .lines import MAX_LINES_PER_REQUEST, answered, clean_line, idempotency_key, store_lines
from .params import EARLIEST, LATEST, MAX_NAME, gunzip, json_object, read_body
from .protowire import count_nested

bp = Blueprint("loki", __name__, url_prefix="/loki/api/v1")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SOURCE_LABELS = ("service_name", "job", "app")
LEVEL_LABELS = ("level", "detected_level", "severity")
JOB_LABEL = "quaero_job_id"
_EPOCH = datetime(1970, 1, 1)


@bp.post("/push")
def push():
    kind = request.mimetype or PROTOBUF  # Loki reads a body without a type as protobuf
    if kind not in (PROTOBUF, JSON):
        raise Unsupported(f"Content-Type must be {PROTOBUF} (snappy) or {JSON}")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip", "snappy") or (encoding == "snappy"
                                                               and kind == JSON):
        raise Unsupported("Content-Encoding must be gzip or identity (protobuf is snappy "
                          "compressed without saying so, as Loki takes it)")
    key = idempotency_key()
    body = read_body()
    # the endpoint in the digest: one key sent here and to POST /api/logs is a conflict
    digest = hashlib.sha256(b"loki\0" + body).hexdigest() if key else None
    if key:
        replay = answered(key, digest)
        if replay is not None:
            return _as_loki(replay)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if encoding == "gzip":
        body = gunzip(body, limit)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    if kind == PROTOBUF:
        items = protobuf_items(unsnappy(body, limit))
    else:
        items = json_items(json_object(body))
    lines = [clean_line(item, where, now) for where, item in items]
    if not lines:
        return Response(status=204)  # Loki takes an empty push
    return _as_loki(store_lines(lines, key, digest))


def _as_loki(stored):
    """Loki answers a push with 204 and no body; an error keeps Quaero's JSON."""
    if isinstance(stored, Response) and stored.status_code >= 300:
        return stored
    return Response(status=204)


# --- bodies ----------------------------------------------------------------------------

def unsnappy(data, limit):
    """A snappy block (Loki's framing: no stream format) decompressed, its size read from
    its header first so that a small body that claims gigabytes is refused unopened."""
    try:
        size = cramjam.snappy.decompress_raw_len(data)
    except Exception:  # cramjam's errors share no base class but Exception
        raise Invalid("body is not snappy-compressed protobuf") from None
    if size > limit:
        raise TooLarge(f"request body too large: at most {limit} bytes once decompressed")
    try:
        return bytes(cramjam.snappy.decompress_raw(data))
    except Exception:
        raise Invalid("body is not snappy-compressed protobuf") from None


# --- protobuf: logproto.PushRequest ----------------------------------------------------

def _push_request_class():
    """``logproto.PushRequest`` built from its description (Loki's push.proto, field for
    field; the strings are declared bytes, which the wire cannot tell apart, so that a line
    that is not UTF-8 is kept with U+FFFD, as JSON's are, instead of failing the batch)."""
    t = descriptor_pb2.FieldDescriptorProto
    one, many = t.LABEL_OPTIONAL, t.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(
        name="quaero/loki_push.proto", package="logproto", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"])

    def message(name, *fields):
        m = proto.message_type.add(name=name)
        for number, (field, kind, label, type_name) in enumerate(fields, 1):
            m.field.add(name=field, number=number, type=kind, label=label,
                        type_name=type_name)

    message("PushRequest", ("streams", t.TYPE_MESSAGE, many, ".logproto.StreamAdapter"))
    message("StreamAdapter", ("labels", t.TYPE_BYTES, one, None),
            ("entries", t.TYPE_MESSAGE, many, ".logproto.EntryAdapter"),
            ("hash", t.TYPE_UINT64, one, None))
    message("EntryAdapter", ("timestamp", t.TYPE_MESSAGE, one, ".google.protobuf.Timestamp"),
            ("line", t.TYPE_BYTES, one, None),
            ("structuredMetadata", t.TYPE_MESSAGE, many, ".logproto.LabelPairAdapter"))
    message("LabelPairAdapter", ("name", t.TYPE_BYTES, one, None),
            ("value", t.TYPE_BYTES, one, None))
    pool = descriptor_pool.DescriptorPool()  # its own: nothing else registers logproto
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("logproto.PushRequest"))


PushRequest = _push_request_class()


def _text(raw):
    return raw.decode("utf-8", "replace")


def protobuf_items(data):
    """``(where, line dict)`` for each entry of a ``PushRequest``, or a 400/413."""
    if count_nested(data, (1, 2), MAX_LINES_PER_REQUEST) > MAX_LINES_PER_REQUEST:
        raise TooLarge(f"at most {MAX_LINES_PER_REQUEST} lines per request")
    push = PushRequest()
    try:
        push.ParseFromString(data)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise Invalid(f"not a Loki PushRequest: {str(exc)[:200]}") from None
    for i, stream in enumerate(push.streams):
        where = f"streams[{i}]"
        fields = stream_fields(parse_labels(_text(stream.labels), f"{where}.labels"))
        for j, entry in enumerate(stream.entries):
            at = f"{where}.entries[{j}]"
            when = None
            if entry.HasField("timestamp"):
                when = _time(entry.timestamp.seconds, entry.timestamp.nanos, at)
            metadata = {_text(p.name): _text(p.value) for p in entry.structuredMetadata}
            yield at, _line(fields, _text(entry.line), when, metadata)


# --- JSON ------------------------------------------------------------------------------

def json_items(doc):
    """``(where, line dict)`` for each value of a JSON push, or a 400/413."""
    streams = doc.get("streams")
    if not isinstance(streams, list):
        raise Invalid("streams must be a list")
    for i, stream in enumerate(streams):
        if not isinstance(stream, dict) or not isinstance(stream.get("values"), list):
            raise Invalid(f"streams[{i}] must be an object with a values list")
    if sum(len(s["values"]) for s in streams) > MAX_LINES_PER_REQUEST:
        raise TooLarge(f"at most {MAX_LINES_PER_REQUEST} lines per request")
    return list(_json_items(streams))


def _json_items(streams):
    for i, stream in enumerate(streams):
        where = f"streams[{i}]"
        labels = stream.get("stream", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise Invalid(f"{where}.stream must be an object of label names to strings")
        fields = stream_fields(labels)
        for j, value in enumerate(stream["values"]):
            at = f"{where}.values[{j}]"
            if not isinstance(value, list) or len(value) not in (2, 3) \
                    or not isinstance(value[0], str) or not isinstance(value[1], str):
                raise Invalid(f'{at} must be ["<unix epoch in nanoseconds>", "<line>"] '
                              "and optionally an object of structured metadata")
            metadata = value[2] if len(value) == 3 else None
            if metadata is not None and not isinstance(metadata, dict):
                raise Invalid(f"{at}[2] (structured metadata) must be an object")
            yield at, _line(fields, value[1], _nanoseconds(value[0], at), metadata)


_DIGITS = re.compile(r"[0-9]{1,25}\Z")


def _nanoseconds(text, where):
    if not _DIGITS.match(text):
        raise Invalid(f"{where}[0] must be a Unix epoch in nanoseconds, as a string")
    seconds, nanos = divmod(int(text), 10 ** 9)
    return _time(seconds, nanos, where)


def _time(seconds, nanos, where):
    """The ISO text of a Loki timestamp from 1970 to 2200 (as POST /api/logs takes)."""
    try:
        ts = _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        ts = None
    if ts is None or not EARLIEST <= ts < LATEST:
        raise Invalid(f"{where}: timestamp must be between 1970-01-01 and 2200-01-01")
    return ts.isoformat()


# --- labels ----------------------------------------------------------------------------

def stream_fields(labels):
    """What a stream's labels say of each of its lines: level, source, job, attributes."""
    level = next((labels[k] for k in LEVEL_LABELS if labels.get(k)), "")
    source = next((labels[k] for k in SOURCE_LABELS if labels.get(k)), None)
    attributes = {k: v for k, v in labels.items() if k != JOB_LABEL}
    return {"level": word_level_name(level),
            "source": source[:MAX_NAME] if source else None,
            "job_id": labels.get(JOB_LABEL) or None, "attributes": attributes}


def _line(fields, message, timestamp, metadata):
    attributes = {**fields["attributes"], **metadata} if metadata else fields["attributes"]
    return {"level": fields["level"], "message": message, "timestamp": timestamp,
            "source": fields["source"], "job_id": fields["job_id"], "attributes": attributes}


_OPEN = re.compile(r"\s*\{\s*")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*', re.S)
_COMMA = re.compile(r",\s*")
_CLOSE = re.compile(r"\}\s*\Z")
_ESCAPE = re.compile(r'\\(?:([abfnrtv\\"\'])|x([0-9a-fA-F]{2})|([0-7]{3})'
                     r"|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))", re.S)
_ESCAPED = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", '"': '"', "'": "'"}


def parse_labels(text, where="labels"):
    """A Prometheus label set, ``{job="api", level="warn"}``, as a dict; a 400 when it is
    not one. Values are Go string literals (Promtail writes them with ``strconv.Quote``):
    ``\\"``, ``\\\\``, ``\\n`` and the other escapes; a ``\\x``/octal byte that is not
    ASCII (Go's way of writing bytes that are not UTF-8) reads as U+FFFD."""
    m = _OPEN.match(text)
    if m is None:
        raise Invalid(f"{where} must be a label set such as {{job=\"api\"}}")
    pos, labels = m.end(), {}
    while not _CLOSE.match(text, pos):
        m = _PAIR.match(text, pos)
        if m is None:
            raise Invalid(f"{where}: a label name=\"value\" was expected at character {pos}")
        name = m.group(1)
        if name in labels:
            raise Invalid(f"{where}: label {name} is given twice")
        labels[name] = _ESCAPE.sub(lambda e: _unescape(e, where), m.group(2))
        pos = m.end()
        comma = _COMMA.match(text, pos)
        if comma is not None:
            pos = comma.end()
        elif not _CLOSE.match(text, pos):
            raise Invalid(f"{where}: ',' or '}}' was expected at character {pos}")
    return labels


def _unescape(m, where):
    simple, hex_byte, octal, u4, u8, other = m.groups()
    if simple is not None:
        return _ESCAPED[simple]
    if hex_byte is not None or octal is not None:
        code = int(hex_byte, 16) if hex_byte is not None else int(octal, 8)
        return chr(code) if code < 0x80 else "\ufffd"
    if other is not None:
        raise Invalid(f"{where}: unknown escape \\{other[:1]} in a label value")
    code = int(u4 or u8, 16)
    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return "\ufffd"
    return chr(code)
