"""The JSON API: log ingest and reads, jobs. The stream lives in ``stream.py``."""
import json
import re
from datetime import datetime, timezone

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from . import jobs as jobops
from .auth import require_token  # stream.py calls api.require_token too
from .errors import APIError
from .ingest import IngestError
from .models import (JOB_STATUSES, LEVEL_ALIASES, LEVELS, STEP_STATUSES, Job, LineFilter, Step,
                     count_lines, db, job_dict, level_counts, select_lines)

bp = Blueprint("api", __name__, url_prefix="/api")
bp.before_request(require_token)

MAX_MESSAGE_BYTES = 65536
MAX_LINES_PER_REQUEST = 10000
MAX_JOB_IDS = 50
MAX_NAME = 200
LIMIT_MAX = {"job": 5000, "service": 500}
DEFAULT_LIMIT = 100
_INT = re.compile(r"[0-9]+\Z")
_BIG = 2 ** 62  # ids beyond this cannot exist; keeps parameters inside BIGINT


def quaero():
    return current_app.extensions["quaero"]


# --- parsing -----------------------------------------------------------------------------

def parse_int(value, name):
    """A non-negative integer from a query string or header, or a 400."""
    if value is None:
        return None
    value = value.strip()
    if not _INT.match(value) or len(value) > 40:
        raise APIError(400, f"{name} must be a non-negative integer")
    return min(int(value), _BIG)


def parse_level(value, default="info"):
    value = default if value in (None, "") else value.strip().lower()
    value = LEVEL_ALIASES.get(value, value)
    if value not in LEVELS:
        raise APIError(400, "level must be one of debug, info, warn, error")
    return LEVELS[value]


def parse_query(args):
    """``(LineFilter, limit)`` from the query of the stream and the polling API."""
    scope = args.get("scope")
    if scope not in ("service", "job"):
        raise APIError(400, "scope must be 'service' or 'job'")
    step = args.get("step")
    job_ids = tuple(dict.fromkeys(j for j in args.getlist("job_id") if j))
    if scope == "service":
        if step is not None:
            raise APIError(400, "step is only allowed with scope=job")
        if job_ids:
            raise APIError(400, "job_id is only allowed with scope=job")
    else:
        if not job_ids:
            raise APIError(400, "job_id is required with scope=job")
        if len(job_ids) > MAX_JOB_IDS:
            raise APIError(400, f"at most {MAX_JOB_IDS} job_id values")
        if step == "":
            step = None
    f = LineFilter(job_ids=job_ids, step=step, min_level=parse_level(args.get("level")))
    limit = parse_int(args.get("limit"), "limit")
    limit = DEFAULT_LIMIT if limit is None else min(limit, LIMIT_MAX[scope])
    return f, limit


def check_jobs_exist(conn, job_ids):
    if not job_ids:
        return
    found = set(conn.execute(sa.select(Job.id).where(Job.id.in_(job_ids))).scalars())
    if len(found) != len(job_ids):
        raise APIError(404, "job not found")


def _read_body():
    """The body, at most MAX_CONTENT_LENGTH bytes: werkzeug refuses a larger Content-Length,
    but cuts a chunked body at the limit without a word, so look for one byte more."""
    data = request.get_data(cache=False)
    if (request.content_length is None and len(data) >= request.max_content_length
            and request.environ.get("wsgi.input_terminated")
            and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()
    return data


def json_body():
    """The request's JSON object, or a 400 (a body over MAX_CONTENT_LENGTH is a 413 first)."""
    try:
        data = json.loads(_read_body())
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise APIError(400, "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise APIError(400, "body must be a JSON object")
    return data


def clean_text(value, name, max_len=None):
    if not isinstance(value, str):
        raise APIError(400, f"{name} must be a string")
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON escapes
        value = value.encode("utf-8", "replace").decode("utf-8")
    if max_len is not None and not 0 < len(value) <= max_len:
        raise APIError(400, f"{name} must be 1 to {max_len} characters")
    return value


def parse_timestamp(value, now):
    if value is None:
        return now
    if not isinstance(value, str) or len(value) > 64:
        raise APIError(400, "timestamp must be an ISO 8601 string")
    try:
        ts = datetime.fromisoformat(value.strip())
        if ts.tzinfo is not None:
            ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise APIError(400, "timestamp must be an ISO 8601 string") from None
    return ts


# --- logs --------------------------------------------------------------------------------

@bp.post("/logs")
def post_logs():
    data = json_body()
    items = data.get("logs")
    if not isinstance(items, list) or not items:
        raise APIError(400, "logs must be a non-empty list")
    if len(items) > MAX_LINES_PER_REQUEST:
        raise APIError(413, f"at most {MAX_LINES_PER_REQUEST} lines per request")
    lines, wanted = [], set()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise APIError(400, f"logs[{i}] must be an object")
        level = item.get("level")
        if not isinstance(level, str):
            raise APIError(400, f"logs[{i}].level is required")
        level = LEVEL_ALIASES.get(level.lower(), level.lower())
        if level not in LEVELS:
            raise APIError(400, f"logs[{i}].level must be one of debug, info, warn, error")
        if "message" not in item:
            raise APIError(400, f"logs[{i}].message is required")
        message = clean_text(item["message"], f"logs[{i}].message")
        if len(message) * 4 > MAX_MESSAGE_BYTES and len(message.encode("utf-8")) > MAX_MESSAGE_BYTES:
            raise APIError(413, f"logs[{i}].message is over {MAX_MESSAGE_BYTES} bytes")
        job_id, step = item.get("job_id"), item.get("step")
        if job_id is not None and not isinstance(job_id, str):
            raise APIError(400, f"logs[{i}].job_id must be a string")
        if step is not None:
            step = clean_text(step, f"logs[{i}].step", MAX_NAME)
            if not job_id:
                raise APIError(400, f"logs[{i}].step needs a job_id")
        job_id = job_id or None
        wanted.add((job_id, step))
        lines.append({"job_id": job_id, "step_name": step, "level": LEVELS[level],
                      "message": message, "timestamp": parse_timestamp(item.get("timestamp"), now)})
    _check_targets(wanted)
    try:
        first_id, last_id = quaero().ingestor.submit(lines)
    except IngestError as exc:
        raise APIError(exc.status, exc.message) from None
    return jsonify(accepted=len(lines), first_id=first_id, last_id=last_id), 201


def _check_targets(wanted):
    job_ids = {j for j, _ in wanted if j}
    if not job_ids:
        return
    if any(len(j) > 32 for j in job_ids):
        raise APIError(404, "job not found")
    rows = db.session.execute(sa.select(Job.id, Step.name).outerjoin(Step, Step.job_id == Job.id)
                              .where(Job.id.in_(job_ids))).all()
    db.session.rollback()  # never hold a transaction while the writer commits
    jobs_found = {j for j, _ in rows}
    steps_found = {(j, s) for j, s in rows}
    for job_id, step in wanted:
        if job_id is None:
            continue
        if job_id not in jobs_found:
            raise APIError(404, f"job {job_id} not found")
        if step is not None and (job_id, step) not in steps_found:
            raise APIError(404, f"step {step!r} not found in job {job_id}")


@bp.get("/logs")
def get_logs():
    f, limit = parse_query(request.args)
    after = parse_int(request.args.get("after"), "after")
    before = parse_int(request.args.get("before"), "before")
    with db.engine.connect() as conn:
        check_jobs_exist(conn, f.job_ids)
        lines, more = select_lines(conn, f, after=after, before=before, limit=limit)
        total = count_lines(conn, f)
    if lines:
        last_id = lines[-1]["id"]
    else:
        last_id = after if after is not None else None
    return jsonify(logs=lines, last_id=last_id,
                   meta={"total_count": total, "displayed_count": len(lines), "has_more": more})


@bp.get("/jobs/<job_id>/logs.txt")
def job_logs_txt(job_id):
    f = LineFilter(job_ids=(job_id,), min_level=LEVELS["debug"])
    engine = db.engine
    with engine.connect() as conn:
        check_jobs_exist(conn, f.job_ids)

    def pages():
        after = 0
        while True:
            with engine.connect() as conn:  # a fresh connection per page: none held across
                lines, more = select_lines(conn, f, after=after, limit=5000)
            if lines:
                yield "".join(format_text_line(line) for line in lines)
                after = lines[-1]["id"]
            if not more:
                return

    return Response(pages(), mimetype="text/plain", headers={
        "Content-Disposition": f'attachment; filename="job-{job_id}.log"'})


def format_text_line(line):
    step = f" [{line['step_name']}]" if line["step_name"] else ""
    message = line["message"].replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\n    ")
    return f"{line['timestamp']} {line['level'].upper():5}{step} {message}\n"


# --- jobs --------------------------------------------------------------------------------

def job_json(job):
    return job_dict(job, level_counts(db.session.connection(), [job.id])[job.id])


@bp.get("/jobs")
def list_jobs():
    status = request.args.get("status")
    if status not in (None, "") and status not in JOB_STATUSES:
        raise APIError(400, f"status must be one of {', '.join(JOB_STATUSES)}")
    limit = parse_int(request.args.get("limit"), "limit")
    limit = 50 if limit is None else min(limit, 500)
    offset = parse_int(request.args.get("offset"), "offset") or 0
    q = sa.select(Job)
    count_q = sa.select(sa.func.count()).select_from(Job)
    if status:
        q = q.where(Job.status == status)
        count_q = count_q.where(Job.status == status)
    jobs = db.session.execute(
        q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)).scalars().all()
    total = db.session.execute(count_q).scalar()
    counts = level_counts(db.session.connection(), [j.id for j in jobs])
    return jsonify(jobs=[job_dict(j, counts[j.id]) for j in jobs], total=total)


@bp.post("/jobs")
def create_job():
    data = json_body()
    if "definition" in data:
        runner = quaero().runner
        name = data["definition"]
        if not isinstance(name, str):
            raise APIError(400, "definition must be a string")
        if runner is None:
            raise APIError(404, f"no job definition named {name!r}")
        job = runner.start(name)
        return jsonify(job_json(job)), 201
    name = clean_text(data.get("name"), "name", MAX_NAME)
    steps = data.get("steps", [])
    if not isinstance(steps, list):
        raise APIError(400, "steps must be a list of names")
    steps = [clean_text(s, "steps[]", MAX_NAME) for s in steps]
    if len(set(steps)) != len(steps):
        raise APIError(400, "step names must be unique")
    if len(steps) > 500:
        raise APIError(400, "at most 500 steps")
    job = jobops.create_job(name, steps)
    return jsonify(job_json(job)), 201


@bp.get("/jobs/<job_id>")
def get_job(job_id):
    return jsonify(job_json(jobops.get_job(job_id)))


def _status_from_body(allowed):
    status = json_body().get("status")
    if status not in allowed:
        raise APIError(400, f"status must be one of {', '.join(allowed)}")
    return status


@bp.patch("/jobs/<job_id>")
def patch_job(job_id):
    status = _status_from_body(JOB_STATUSES)
    jobops.get_job(job_id)
    runner = quaero().runner
    if status == "cancelled" and runner is not None and runner.cancel(job_id):
        return jsonify(job_json(jobops.get_job(job_id)))
    return jsonify(job_json(jobops.set_job_status(job_id, status)))


@bp.patch("/jobs/<job_id>/steps/<step_name>")
def patch_step(job_id, step_name):
    status = _status_from_body(STEP_STATUSES)
    return jsonify(job_json(jobops.set_step_status(job_id, step_name, status)))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id):
    job = jobops.get_job(job_id)
    if job.status not in ("pending", "running"):
        raise APIError(409, f"job is {job.status}")
    runner = quaero().runner
    if runner is None or not runner.cancel(job_id):
        jobops.set_job_status(job_id, "cancelled", reason="cancelled by request")
    return jsonify(job_json(jobops.get_job(job_id))), 202


@bp.post("/jobs/<job_id>/rerun")
def rerun_job(job_id):
    job = jobops.get_job(job_id)
    runner = quaero().runner
    if not job.definition or runner is None:
        raise APIError(409, "only jobs started from a definition can be rerun")
    return jsonify(job_json(runner.start(job.definition))), 201


@bp.delete("/jobs/<job_id>")
def delete_job(job_id):
    jobops.delete_job(job_id)
    return "", 204


@bp.get("/openapi.json")
def openapi():
    from .openapi import document
    return jsonify(document(current_app.config["MAX_CONTENT_LENGTH"]))


@bp.get("/job-definitions")
def job_definitions():
    runner = quaero().runner
    return jsonify(definitions=runner.definitions_json() if runner else [])
