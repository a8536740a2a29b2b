"""OpenTelemetry logs in: ``POST /v1/logs``, OTLP/HTTP as the SDKs' exporters and the
Collector's ``otlphttp`` exporter send it — protobuf or JSON, gzip or not — decoded with
the ``opentelemetry-proto`` messages. Every record becomes one line through the one
write path; records naming a job that does not exist are rejected (partial success), the
others are stored. Auth: the token rule of ``/api`` (``web.auth``).

A line's attributes are the record's attributes, then its scope's, then its resource's
other than ``service.name`` and ``quaero.job.id`` (on a clash the record's win, then the
scope's). Strings, integers, doubles and booleans are kept as they are; bytes become
their base64 text, arrays and key-value lists their compact JSON text. Attributes are
never a reason to refuse a record: past the contract's limits they are cut and dropped as
OpenTelemetry's own attribute limits do (``quaero.fields``: a string value over 4 KiB is
cut, ending in ``…``; keys past 64 or past 16 KiB in all are dropped, the resource's
first, then the scope's, then the record's own). Refusing instead would lose the error
lines first: the SDKs put a whole stack trace in ``exception.stacktrace``. The trace and span
ids are the record's; one of the wrong length or all zeros is no id (as the OTLP
specification asks of receivers)."""
import base64
import binascii
import json
from datetime import datetime, timezone

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest, ExportLogsServiceResponse)

from ..attributes import SPAN_DIGITS, TRACE_DIGITS, clean_attributes
from ..errors import Invalid, TooLarge, Unsupported
from ..fields import fit_attributes, hex_id
from ..levels import word_level_name
from ..models import LEVELS, Job, db
from .auth import check_line_targets
from .params import EARLIEST, LATEST, MAX_NAME, clean_text, gunzip, read_body
from .protowire import count_nested

bp = Blueprint("otlp", __name__, url_prefix="/v1")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
JOB_ATTRIBUTE = "quaero.job.id"
RESOURCE_ONLY = frozenset(("service.name", JOB_ATTRIBUTE))  # the line's source and job
MAX_MESSAGE_BYTES = 65536
MAX_RECORDS = 10000  # as POST /api/logs's lines: a record costs as little as 2 bytes


@bp.post("/logs")
def export_logs():
    kind = request.mimetype
    if kind not in (PROTOBUF, JSON):
        raise Unsupported(f"Content-Type must be {PROTOBUF} or {JSON}")
    body = _body()
    if kind == PROTOBUF and count_records(body, MAX_RECORDS) > MAX_RECORDS:
        raise TooLarge(f"at most {MAX_RECORDS} log records per request")
    export = decode(body, kind)
    if sum(len(s.log_records) for r in export.resource_logs for s in r.scope_logs) > MAX_RECORDS:
        raise TooLarge(f"at most {MAX_RECORDS} log records per request")
    lines, rejected = records_to_lines(export, datetime.now(timezone.utc).replace(tzinfo=None))
    lines, unknown = _known_jobs(lines)
    rejected += unknown
    check_line_targets(lines)  # a key limited to some jobs: 403, nothing stored
    if lines:
        current_app.extensions["quaero"].ingestor.submit(lines)
    answer = ExportLogsServiceResponse()
    if rejected:
        answer.partial_success.rejected_log_records = len(rejected)
        answer.partial_success.error_message = "; ".join(dict.fromkeys(rejected))
    if kind == PROTOBUF:
        return Response(answer.SerializeToString(), mimetype=PROTOBUF)
    return Response(json_format.MessageToJson(answer, indent=None), mimetype=JSON)


def _body():
    data = read_body()
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding != "gzip":
        raise Unsupported("Content-Encoding must be gzip or identity")
    return gunzip(data, current_app.config["MAX_CONTENT_LENGTH"])


def decode(data, kind):
    """An ``ExportLogsServiceRequest`` from OTLP protobuf or OTLP JSON bytes, or a 400."""
    export = ExportLogsServiceRequest()
    try:
        if kind == PROTOBUF:
            export.ParseFromString(data)
        else:
            json_format.ParseDict(_hex_ids_to_base64(json.loads(data)), export,
                                  ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise Invalid(f"not an OTLP logs export request: {str(exc)[:200]}") from None
    return export


def _items(doc, key):
    """``doc[key]`` when ``doc`` is an object and that is a list (else the parser says
    what is wrong with it)."""
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, list) else ()


def _hex_ids_to_base64(doc):
    """OTLP JSON writes trace and span ids in hex where protobuf's JSON has base64."""
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    for resource_logs in _items(doc, "resourceLogs"):
        for scope_logs in _items(resource_logs, "scopeLogs"):
            for record in _items(scope_logs, "logRecords"):
                for key in ("traceId", "spanId"):
                    if isinstance(record, dict) and isinstance(record.get(key), str):
                        try:
                            raw = binascii.unhexlify(record[key])
                        except binascii.Error:
                            raise ValueError(f"{key} must be hex") from None
                        record[key] = base64.b64encode(raw).decode()
    return doc


def count_records(data, most):
    """The number of log records in an OTLP protobuf export request, counted from the
    wire format (resource_logs = 1, its scope_logs = 2, their log_records = 2) and given up
    once past ``most``: a 24 MB request of 3.5 million empty records took a worker to
    3.6 GB when parsed. A malformed body counts 0 here; the parser says what is wrong."""
    return count_nested(data, (1, 2, 2), most)


def records_to_lines(export, now):
    """``(lines, rejected reasons)``: one line dict per log record."""
    lines, rejected = [], []
    for resource_logs in export.resource_logs:
        attributes = {a.key: a.value.string_value for a in resource_logs.resource.attributes}
        job_id = attributes.get(JOB_ATTRIBUTE) or None
        source = clean_text(attributes.get("service.name", ""), "service.name")[:MAX_NAME] or None
        resource = [(key, value) for key, value in
                    plain_attributes(resource_logs.resource.attributes)
                    if key not in RESOURCE_ONLY]
        for scope_logs in resource_logs.scope_logs:
            inherited = plain_attributes(scope_logs.scope.attributes) + resource
            for record in scope_logs.log_records:
                message = clean_text(_text(record.body), "body")
                if len(message) * 4 > MAX_MESSAGE_BYTES and \
                        len(message.encode("utf-8")) > MAX_MESSAGE_BYTES:
                    rejected.append(f"a body over {MAX_MESSAGE_BYTES} bytes")
                    continue
                try:  # fitted, so only a disagreement with the validation can refuse it
                    fields = clean_attributes(fit_attributes(
                        plain_attributes(record.attributes) + inherited), "attributes")
                except (Invalid, TooLarge) as exc:
                    rejected.append(exc.message)
                    continue
                lines.append({"job_id": job_id, "step_name": None, "level": LEVELS[level(record)],
                              "message": message, "source": source,
                              "timestamp": _time(record.time_unix_nano
                                                 or record.observed_time_unix_nano, now),
                              "attributes": fields,
                              "trace_id": hex_id(record.trace_id.hex(), TRACE_DIGITS),
                              "span_id": hex_id(record.span_id.hex(), SPAN_DIGITS)})
    return lines, rejected


def plain_attributes(key_values):
    """OTLP ``KeyValue``s as ``(key, value)`` pairs of plain values (see the module doc),
    in their order; one without a value is left out, a repeated key has its last value."""
    pairs = {}
    for kv in key_values:
        kind = kv.value.WhichOneof("value")
        if kind is None:
            continue
        if kind in ("string_value", "bool_value", "int_value", "double_value"):
            value = getattr(kv.value, kind)
        elif kind == "bytes_value":
            value = base64.b64encode(kv.value.bytes_value).decode()
        else:
            value = _text(kv.value)
        pairs[kv.key] = value
    return list(pairs.items())


def level(record):
    """Severity number 1-8 debug, 9-12 info, 13-16 warn, 17-24 error; unspecified: the
    severity text if it names a level, else info."""
    n = record.severity_number
    for top, name in ((8, "debug"), (12, "info"), (16, "warn"), (24, "error")):
        if 1 <= n <= top:
            return name
    return word_level_name(record.severity_text)


def _text(value):
    """A record's body as text: strings as they are, anything else as compact JSON."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return value.string_value
    return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False)


def _plain(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind) if kind else None


def _time(unix_nano, now):
    """A record's time; ``now`` when it has none or one outside 1970-2200 (as POST
    /api/logs refuses)."""
    if not unix_nano:
        return now
    try:
        ts = datetime.fromtimestamp(unix_nano / 1e9, timezone.utc).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return now
    return ts if EARLIEST <= ts < LATEST else now


def _known_jobs(lines):
    """The lines whose job exists (or that have none), and a reason per other line."""
    wanted = {line["job_id"] for line in lines if line["job_id"]}
    if not wanted:
        return lines, []
    found = set(db.session.execute(sa.select(Job.id).where(
        Job.id.in_([j for j in wanted if len(j) <= 32]))).scalars())
    db.session.rollback()  # never hold a transaction while the writer commits
    keep = [line for line in lines if not line["job_id"] or line["job_id"] in found]
    rejected = [f"job {line['job_id'][:64]} not found" for line in lines
                if line["job_id"] and line["job_id"] not in found]
    return keep, rejected
