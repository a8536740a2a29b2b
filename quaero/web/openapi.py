"""The OpenAPI 3.1 description of Quaero's HTTP API, served at ``/api/openapi.json``."""
from flask import Blueprint, current_app, jsonify

from ..models import JOB_STATUSES, STEP_STATUSES

bp = Blueprint("openapi", __name__, url_prefix="/api")

LEVEL = {"type": "string", "enum": ["debug", "info", "warn", "error"]}
NULL_STR = {"type": ["string", "null"]}
TIME = {"type": ["string", "null"], "format": "date-time"}
INT0 = {"type": "integer", "minimum": 0}


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema):
    return {"content": {"application/json": {"schema": schema}}}


def _error(description):
    return {"description": description, **_json(_ref("Error"))}


TOO_LONG = {"414": {"description": "request line over 8190 bytes: refused by the HTTP server "
                                   "(gunicorn) before Quaero sees it"}}


def _errors(*codes):
    text = {400: "bad request", 401: "authentication required", 404: "not found",
            405: "method not allowed", 409: "conflict with the current state",
            413: "request too large",
            503: "unavailable (database away or not answering in time, stream cap, shutdown)",
            507: "the database's disk is full or below its free-space floor; nothing stored"}
    return {str(c): _error(text[c]) for c in codes}


def _q(name, schema, description="", required=False, explode=None):
    p = {"name": name, "in": "query", "required": required, "schema": schema,
         "description": description}
    if explode is not None:
        p["explode"] = explode
        p["style"] = "form"
    return p


def _path(name):
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1}}


Q = {"type": "string", "minLength": 1, "maxLength": 200}

# the query string of the stream and the polling API (values arrive as strings and are
# validated by the server; invalid ones get a 400)
LINE_QUERY = [
    _q("scope", {"type": "string", "enum": ["service", "job"]}, "service or job", True),
    _q("job_id", {"type": "array", "items": {"type": "string", "maxLength": 32}, "maxItems": 50},
       "required for scope=job; may repeat", explode=True),
    _q("step", {"type": "string", "maxLength": 200}, "step name (scope=job)"),
    _q("level", LEVEL, "minimum level (default info)"),
    _q("limit", INT0, "lines (default 100; at most 5000 for job, 500 for service)"),
    _q("after", INT0, "only lines with a larger id"),
    _q("q", Q, "only lines whose message contains this text (any case, taken literally)"),
]

SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "LogLine": {
        "type": "object",
        "required": ["id", "timestamp", "level", "message", "job_id", "step_name", "line_number"],
        "properties": {"id": {"type": "integer"}, "timestamp": {"type": "string"},
                       "level": LEVEL, "message": {"type": "string"}, "job_id": NULL_STR,
                       "step_name": NULL_STR, "line_number": {"type": "integer", "minimum": 1}}},
    "Meta": {"type": "object", "required": ["total_count", "displayed_count", "has_more"],
             "properties": {"total_count": INT0, "displayed_count": INT0,
                            "has_more": {"type": "boolean"},
                            "total_count_capped": {"type": "boolean", "description":
                                                   "with q: counting stopped at 10,000"}}},
    "SearchResults": {
        "type": "object", "required": ["results", "jobs", "next_before"],
        "properties": {"results": {"type": "array", "items": _ref("LogLine")},
                       "jobs": {"type": "object", "additionalProperties": {
                           "type": "object", "required": ["name", "status"],
                           "properties": {"name": {"type": "string"},
                                          "status": {"type": "string",
                                                     "enum": list(JOB_STATUSES)}}}},
                       "next_before": {"type": ["integer", "null"]}}},
    "Histogram": {
        "type": "object", "required": ["buckets", "total"],
        "properties": {"total": INT0, "buckets": {"type": "array", "items": {
            "type": "object", "required": ["start", "end", "counts"],
            "properties": {"start": {"type": "string", "format": "date-time"},
                           "end": {"type": "string", "format": "date-time"},
                           "counts": {"type": "object",
                                      "required": ["debug", "info", "warn", "error"],
                                      "additionalProperties": INT0}}}}}},
    "LogsPage": {"type": "object", "required": ["logs", "meta", "last_id"],
                 "properties": {"logs": {"type": "array", "items": _ref("LogLine")},
                                "meta": _ref("Meta"), "last_id": {"type": ["integer", "null"]}}},
    "IngestLine": {
        "type": "object", "required": ["level", "message"],
        "properties": {"level": {"type": "string", "enum": ["debug", "info", "warn", "warning", "error"]},
                       "message": {"type": "string"}, "job_id": NULL_STR, "step": NULL_STR,
                       "timestamp": {"type": ["string", "null"], "format": "date-time"}}},
    "IngestRequest": {"type": "object", "required": ["logs"],
                      "properties": {"logs": {"type": "array", "minItems": 1, "maxItems": 10000,
                                              "items": _ref("IngestLine")}}},
    "IngestResult": {"type": "object", "required": ["accepted", "first_id", "last_id"],
                     "properties": {"accepted": {"type": "integer", "minimum": 1},
                                    "first_id": {"type": "integer"}, "last_id": {"type": "integer"}}},
    "Step": {"type": "object", "required": ["id", "name", "status", "started_at", "finished_at"],
             "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                            "status": {"type": "string", "enum": list(STEP_STATUSES)},
                            "started_at": TIME, "finished_at": TIME}},
    "Job": {"type": "object",
            "required": ["id", "name", "status", "created_at", "started_at", "finished_at",
                         "steps", "log_counts"],
            "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                           "definition": NULL_STR,
                           "status": {"type": "string", "enum": list(JOB_STATUSES)},
                           "created_at": {"type": "string"}, "started_at": TIME,
                           "finished_at": TIME, "steps": {"type": "array", "items": _ref("Step")},
                           "log_counts": {"type": "object",
                                          "required": ["debug", "info", "warn", "error"],
                                          "additionalProperties": INT0},
                           # only in GET /api/jobs: the newest error line (message cut to 300)
                           "last_error": {"type": ["object", "null"]}}},
    "JobList": {"type": "object", "required": ["jobs", "total"],
                "properties": {"jobs": {"type": "array", "items": _ref("Job")}, "total": INT0}},
    "NewJob": {"oneOf": [
        {"type": "object", "required": ["definition"],
         "properties": {"definition": {"type": "string"}}},
        {"type": "object", "required": ["name"],
         "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "steps": {"type": "array", "items": {"type": "string"}}}}]},
    "StatusChange": {"type": "object", "required": ["status"],
                     "properties": {"status": {"type": "string"}}},
    "Definitions": {"type": "object", "required": ["definitions"],
                    "properties": {"definitions": {"type": "array", "items": {
                        "type": "object", "properties": {
                            "schedule": {"type": ["string", "null"],
                                         "description": "5-field cron expression"},
                            "next_run_at": {"type": ["string", "null"]}}}}}},
    "Alerts": {"type": "object", "required": ["rules", "destinations"], "properties": {
        "rules": {"type": "array", "items": {
            "type": "object", "required": ["name", "kind", "state", "last_fired_at",
                                           "last_delivery"],
            "properties": {"name": {"type": "string"}, "kind": {"type": ["string", "null"]},
                           "state": {"type": ["string", "null"]},
                           "last_fired_at": {"type": ["string", "null"]},
                           "last_delivery": {"type": ["object", "null"]},
                           "error": {"type": "string",
                                     "description": "the file or rule does not load"}}}},
        "destinations": {"type": "array", "items": {"type": "object"}},
        "evaluator": {"type": ["object", "null"],
                      "description": "the process that evaluates the rules (host, pid)"}}},
    "AlertTest": {"type": "object", "required": ["rule", "destinations"],
                  "properties": {"rule": {"type": "string"}, "event_id": {"type": "integer"},
                                 "destinations": {"type": "array", "items": {"type": "string"}}}},
    "LokiPush": {
        "type": "object", "required": ["streams"],
        "properties": {"streams": {"type": "array", "items": {
            "type": "object", "required": ["values"],
            "properties": {
                "stream": {"type": "object", "additionalProperties": {"type": "string"},
                           "description": "labels: the lines' attributes; service_name, job "
                                          "or app the source; level, detected_level or "
                                          "severity the level; quaero_job_id the job"},
                "values": {"type": "array", "items": {
                    "type": "array", "minItems": 2, "maxItems": 3,
                    "prefixItems": [
                        {"type": "string", "pattern": "^[0-9]{1,25}$",
                         "description": "Unix epoch in nanoseconds"},
                        {"type": "string", "description": "the line"},
                        {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "structured metadata: more attributes"}]}}}}}}},
    "Health": {"type": "object", "required": ["status"],
               "properties": {"status": {"type": "string"}, "checks": {"type": "object"}}},
}


def _op(summary, responses, params=(), body=None, op_id=None):
    op = {"summary": summary, "operationId": op_id or summary.lower().replace(" ", "_"),
          "parameters": list(params), "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


JOB_PATH = [_path("job_id")]

PATHS = {
    "/api/logs": {
        "get": _op("Read log lines", {"200": {"description": "lines, oldest first",
                                              **_json(_ref("LogsPage"))},
                                      **_errors(400, 401, 404, 503), **TOO_LONG},
                   LINE_QUERY + [_q("before", INT0, "only lines with a smaller id")]),
    },
    "/api/logs/stream": {
        "get": _op("Stream log lines", {
            "200": {"description": "Server-Sent Events: logs, status, ping, end",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            **_errors(400, 401, 404, 503), **TOO_LONG}, LINE_QUERY + [
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": INT0}]),
    },
    "/api/logs/histogram": {
        "get": _op("Log volume", {
            "200": {"description": "matching lines per time bucket and level, buckets of equal "
                                   "width from the first matching line to the last (to now "
                                   "while the job runs); the counts add up to total",
                    **_json(_ref("Histogram"))},
            **_errors(400, 401, 404, 503), **TOO_LONG},
            [_q("scope", {"type": "string", "enum": ["service", "job", "all"]},
                "service, job, or all (with q: the matches of GET /api/search)", True)]
            + [p for p in LINE_QUERY if p["name"] not in ("scope", "limit", "after")] + [
                _q("buckets", {"type": "integer", "minimum": 1},
                   "at most this many buckets (default 60; more than 500 counts as 500)")],
            op_id="log_histogram"),
    },
    "/api/search": {
        "get": _op("Search log lines", {"200": {"description": "matches, newest first",
                                                **_json(_ref("SearchResults"))},
                                        **_errors(400, 401, 404, 503), **TOO_LONG},
                   [_q("q", Q, "text the message contains (any case, taken literally)", True),
                    _q("level", LEVEL, "minimum level (default debug: every line)"),
                    _q("job_id", {"type": "array", "items": {"type": "string", "maxLength": 32},
                                  "maxItems": 50},
                       "only these jobs (may repeat); none: every job and the service log",
                       explode=True),
                    _q("before", INT0, "only lines with a smaller id (next_before pages back)"),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 500},
                       "results (default 50)")]),
    },
    "/api/jobs": {
        "get": _op("List jobs", {"200": {"description": "newest first", **_json(_ref("JobList"))},
                                 **_errors(400, 401, 503)},
                   [_q("status", {"type": "string", "enum": list(JOB_STATUSES)}),
                    _q("limit", INT0), _q("offset", INT0)]),
        "post": _op("Create job", {"201": {"description": "created", **_json(_ref("Job"))},
                                   **_errors(400, 401, 404, 413, 503)}, body=_ref("NewJob")),
    },
    "/api/jobs/{job_id}": {
        "get": _op("Get job", {"200": {"description": "the job", **_json(_ref("Job"))},
                               **_errors(401, 404, 503)}, JOB_PATH),
        "patch": _op("Change job status", {"200": {"description": "the job", **_json(_ref("Job"))},
                                           **_errors(400, 401, 404, 409, 413, 503)},
                     JOB_PATH, body=_ref("StatusChange")),
        "delete": _op("Delete job", {"204": {"description": "deleted"},
                                     **_errors(401, 404, 409, 503)}, JOB_PATH),
    },
    "/api/jobs/{job_id}/steps/{step_name}": {
        "patch": _op("Change step status", {"200": {"description": "the job", **_json(_ref("Job"))},
                                            **_errors(400, 401, 404, 409, 413, 503)},
                     JOB_PATH + [_path("step_name")], body=_ref("StatusChange")),
    },
    "/api/jobs/{job_id}/cancel": {
        "post": _op("Cancel job", {"202": {"description": "cancelling", **_json(_ref("Job"))},
                                   **_errors(401, 404, 409, 503)}, JOB_PATH),
    },
    "/api/jobs/{job_id}/rerun": {
        "post": _op("Rerun job", {"201": {"description": "the new job", **_json(_ref("Job"))},
                                  **_errors(401, 404, 409, 503)}, JOB_PATH),
    },
    "/api/jobs/{job_id}/logs.txt": {
        "get": _op("Download job log", {
            "200": {"description": "plain text", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(401, 404, 503)}, JOB_PATH),
    },
    "/api/job-definitions": {
        "get": _op("List job definitions", {"200": {"description": "definitions",
                                                    **_json(_ref("Definitions"))},
                                            **_errors(401, 503)}),
    },
    "/api/alerts": {
        "get": _op("List alerts", {"200": {"description": "rules (with their state, last firing "
                                                          "and last delivery) and destinations",
                                           **_json(_ref("Alerts"))},
                                   **_errors(401, 503)}),
    },
    "/api/alerts/{rule}/test": {
        "post": _op("Test alert", {"202": {"description": "a test notification is on its way "
                                                          "to the rule's destinations",
                                           **_json(_ref("AlertTest"))},
                                   **_errors(401, 404, 409, 503)}, [_path("rule")]),
    },
    "/healthz": {
        "get": _op("Health", {"200": {"description": "ok", **_json(_ref("Health"))},
                              "503": {"description": "unhealthy", **_json(_ref("Health"))}}),
    },
}


def _ingest(max_body):
    """``POST /api/logs``, whose limits depend on the server's body limit."""
    op = _op("Ingest log lines", {
        "201": {"description": "committed (or, for a repeated Idempotency-Key, the first "
                               "request's answer, nothing stored again)",
                **_json(_ref("IngestResult"))},
        **_errors(400, 401, 404, 503, 507),
        "409": _error("this Idempotency-Key was used in the last 24 hours for another body"),
        "413": _error(f"a message over 65,536 bytes of UTF-8, more than 10,000 lines, or a body "
                      f"over {max_body} bytes; nothing of the request is stored")},
        [{"name": "Idempotency-Key", "in": "header", "required": False,
          "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$"},
          "description": "a request repeated with a key seen in the last 24 hours answers "
                         "the first request's status and body and stores nothing more"}],
        body=_ref("IngestRequest"))
    op["description"] = (
        f"All or nothing. A request body (on every endpoint) is at most {max_body} bytes "
        "(QUAERO_MAX_BODY_BYTES; 32 MiB by default) and is refused with 413 before it is "
        "parsed: 10,000 lines of 64 KiB do not fit in one request, so send large batches "
        "in several requests. Answered within QUAERO_INGEST_TIMEOUT (8 s): committed, or 503 "
        "and never committed later. Timestamps from 1970-01-01 to 2200-01-01.")
    return op


def _loki_push(max_body):
    """``POST /loki/api/v1/push``: Loki's push API, as its shippers send it."""
    op = {"summary": "Loki push", "operationId": "loki_push", "parameters": [
        {"name": "Idempotency-Key", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$"},
         "description": "as on POST /api/logs"}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("LokiPush")},
            "application/x-protobuf": {"schema": {
                "type": "string", "format": "binary",
                "description": "a snappy-compressed (block format) logproto.PushRequest"}}}},
        "responses": {
            "204": {"description": "stored (or, for a repeated Idempotency-Key, the first "
                                   "request was; nothing stored again)"},
            **_errors(400, 401, 404, 503, 507),
            "409": _error("this Idempotency-Key was used in the last 24 hours for another body"),
            "413": _error(f"a line over 65,536 bytes of UTF-8, more than 10,000 lines, labels "
                          f"past the attribute limits, or a body over {max_body} bytes "
                          f"(decompressed too); nothing of the request is stored"),
            "415": _error("a Content-Type other than application/json or "
                          "application/x-protobuf, or a Content-Encoding other than gzip")}}
    op["description"] = (
        "The Loki push API, for Promtail, Grafana Alloy, Fluent Bit, Vector and other Loki "
        "clients: JSON (Content-Encoding gzip allowed) or snappy-compressed protobuf. All or "
        "nothing, as POST /api/logs.")
    return op


def document(max_body):
    paths = {**PATHS, "/api/logs": {**PATHS["/api/logs"], "post": _ingest(max_body)},
             "/loki/api/v1/push": {"post": _loki_push(max_body)}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Quaero", "version": "1.0",
                 "description": "Live log service: ingest, read, stream; jobs."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
    }


@bp.get("/openapi.json")
def openapi():
    return jsonify(document(current_app.config["MAX_CONTENT_LENGTH"]))
