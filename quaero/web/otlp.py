"""OpenTelemetry logs in: ``POST /v1/logs``, OTLP/HTTP as the SDKs' exporters and the
Collector's ``otlphttp`` exporter send it — protobuf or JSON, gzip or not — decoded with
the ``opentelemetry-proto`` messages. Every record becomes one line through the one
write path; records naming a job that does not exist are rejected (partial success), the
others are stored. Auth: the token rule of ``/api`` (``web.auth``)."""
import base64
import binascii
import json
import zlib
from datetime import datetime, timezone

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest, ExportLogsServiceResponse)

from ..errors import APIError, Invalid, TooLarge
from ..ingest import IngestError
from ..models import LEVELS, Job, db
from .params import MAX_NAME, clean_text, read_body

bp = Blueprint("otlp", __name__, url_prefix="/v1")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
JOB_ATTRIBUTE = "quaero.job.id"
MAX_MESSAGE_BYTES = 65536
_TEXT_LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "notice": "info",
                "warn": "warn", "warning": "warn", "error": "error", "fatal": "error",
                "critical": "error"}


@bp.post("/logs")
def export_logs():
    kind = request.mimetype
    if kind not in (PROTOBUF, JSON):
        raise APIError(415, f"Content-Type must be {PROTOBUF} or {JSON}")
    export = decode(_body(), kind)
    lines, rejected = records_to_lines(export, datetime.now(timezone.utc).replace(tzinfo=None))
    lines, unknown = _known_jobs(lines)
    rejected += unknown
    if lines:
        try:
            current_app.extensions["quaero"].ingestor.submit(lines)
        except IngestError as exc:
            raise APIError(exc.status, exc.message) from None
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
        raise APIError(415, "Content-Encoding must be gzip or identity")
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, limit)
    except zlib.error:
        raise Invalid("body is not valid gzip") from None
    if inflater.unconsumed_tail:
        raise TooLarge(f"request body too large: at most {limit} bytes once decompressed")
    if not inflater.eof:
        raise Invalid("body is not valid gzip (truncated)")
    return out


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


def _hex_ids_to_base64(doc):
    """OTLP JSON writes trace and span ids in hex where protobuf's JSON has base64."""
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    for resource_logs in doc.get("resourceLogs") or ():
        for scope_logs in (resource_logs or {}).get("scopeLogs") or ():
            for record in (scope_logs or {}).get("logRecords") or ():
                for key in ("traceId", "spanId"):
                    if isinstance(record, dict) and isinstance(record.get(key), str):
                        try:
                            raw = binascii.unhexlify(record[key])
                        except binascii.Error:
                            raise ValueError(f"{key} must be hex") from None
                        record[key] = base64.b64encode(raw).decode()
    return doc


def records_to_lines(export, now):
    """``(lines, rejected reasons)``: one line dict per log record."""
    lines, rejected = [], []
    for resource_logs in export.resource_logs:
        attributes = {a.key: a.value.string_value for a in resource_logs.resource.attributes}
        job_id = attributes.get(JOB_ATTRIBUTE) or None
        source = clean_text(attributes.get("service.name", ""), "service.name")[:MAX_NAME] or None
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                message = clean_text(_text(record.body), "body")
                if len(message) * 4 > MAX_MESSAGE_BYTES and \
                        len(message.encode("utf-8")) > MAX_MESSAGE_BYTES:
                    rejected.append(f"a body over {MAX_MESSAGE_BYTES} bytes")
                    continue
                lines.append({"job_id": job_id, "step_name": None, "level": LEVELS[level(record)],
                              "message": message, "source": source,
                              "timestamp": _time(record.time_unix_nano
                                                 or record.observed_time_unix_nano, now)})
    return lines, rejected


def level(record):
    """Severity number 1-8 debug, 9-12 info, 13-16 warn, 17-24 error; unspecified: the
    severity text if it names a level, else info."""
    n = record.severity_number
    for top, name in ((8, "debug"), (12, "info"), (16, "warn"), (24, "error")):
        if 1 <= n <= top:
            return name
    return _TEXT_LEVELS.get(record.severity_text.strip().lower(), "info")


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
    if not unix_nano:
        return now
    try:
        return datetime.fromtimestamp(unix_nano / 1e9, timezone.utc).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return now


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
