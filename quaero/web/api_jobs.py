"""The jobs API: list, create, read, change status, cancel, rerun, delete; definitions."""
import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, request

from .. import jobs as jobops
from ..errors import Conflict, Invalid, NotFound
from ..models import (JOB_STATUSES, LEVELS, RARE_LEVEL, STEP_STATUSES, Job, db, iso, job_dict,
                      log_t, of_jobs)
from ..queries import level_counts
from ..access import INGEST, OPERATE
from .auth import audit, jobs_clause, principal, require, require_job
from .params import MAX_NAME, clean_text, json_body, parse_int

# auth: web.auth, for all of /api (access.ROUTE_NEEDS); what depends on the body or the
# job (a run needs operate, a producer's job ingest; a key's job pattern) is checked here
bp = Blueprint("jobs", __name__, url_prefix="/api")


def _runner():
    return current_app.extensions["quaero"].runner


def job_json(job):
    return job_dict(job, level_counts(db.session.connection(), [job.id])[job.id])


@bp.get("/jobs")
def list_jobs():
    status = request.args.get("status")
    if status not in (None, "") and status not in JOB_STATUSES:
        raise Invalid(f"status must be one of {', '.join(JOB_STATUSES)}")
    limit = parse_int(request.args.get("limit"), "limit")
    limit = 50 if limit is None else min(limit, 500)
    offset = parse_int(request.args.get("offset"), "offset") or 0
    q = sa.select(Job)
    count_q = sa.select(sa.func.count()).select_from(Job)
    if status:
        q = q.where(Job.status == status)
        count_q = count_q.where(Job.status == status)
    limited = jobs_clause(db.engine.dialect.name)  # a key limited to some jobs sees those
    if limited is not None:
        q = q.where(limited)
        count_q = count_q.where(limited)
    jobs = db.session.execute(
        q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)).scalars().all()
    total = db.session.execute(count_q).scalar()
    conn = db.session.connection()
    counts = level_counts(conn, [j.id for j in jobs])
    errors = last_errors(conn, [j.id for j in jobs if counts[j.id]["error"]])
    out = []
    for j in jobs:
        item = job_dict(j, counts[j.id])
        item["last_error"] = errors.get(j.id)
        out.append(item)
    return jsonify(jobs=out, total=total)


LAST_ERROR_CHARS = 300


def last_errors(conn, job_ids):
    """``{job_id: {"id", "line_number", "step_name", "timestamp", "message"}}``: each job's
    newest error line (the message cut to LAST_ERROR_CHARS), in one query: per job a
    backwards read of its (job_id, level, id) index that stops at the first row."""
    if not job_ids:
        return {}
    parts = [sa.select(log_t.c.id, sa.literal(jid).label("job_id"), log_t.c.line_number,
                       log_t.c.step_name, log_t.c.timestamp,
                       sa.func.substr(log_t.c.message, 1, LAST_ERROR_CHARS))
             .where(of_jobs((jid,)), log_t.c.level == LEVELS["error"],
                    log_t.c.level >= sa.literal_column(str(RARE_LEVEL)))  # the index's condition
             .order_by(log_t.c.id.desc()).limit(1).subquery().select() for jid in job_ids]
    rows = conn.execute(sa.union_all(*parts)).all()
    return {r[1]: {"id": r[0], "line_number": r[2], "step_name": r[3], "timestamp": iso(r[4]),
                   "message": r[5]} for r in rows}


@bp.post("/jobs")
def create_job():
    data = json_body()
    if "definition" in data:
        runner = _runner()
        name = data["definition"]
        if not isinstance(name, str):
            raise Invalid("definition must be a string")
        require(OPERATE)
        require_job(name, name)
        if runner is None:
            raise NotFound(f"no job definition named {name!r}")
        job = runner.start_job(name)
        audit("run", f"ran {name!r}: job {job.id}", job_id=job.id, definition=name)
        return jsonify(job_json(job)), 201
    require(INGEST)
    name = clean_text(data.get("name"), "name", MAX_NAME)
    require_job(name)
    steps = data.get("steps", [])
    if not isinstance(steps, list):
        raise Invalid("steps must be a list of names")
    steps = [clean_text(s, "steps[]", MAX_NAME) for s in steps]
    if len(set(steps)) != len(steps):
        raise Invalid("step names must be unique")
    if len(steps) > 500:
        raise Invalid("at most 500 steps")
    job = jobops.create_job(name, steps)
    return jsonify(job_json(job)), 201


@bp.get("/jobs/<job_id>")
def get_job(job_id):
    return jsonify(job_json(jobops.get_job(job_id)))


def _status_from_body(allowed):
    status = json_body().get("status")
    if status not in allowed:
        raise Invalid(f"status must be one of {', '.join(allowed)}")
    return status


def _may_change(job):
    """A producer (``ingest``) changes the status of its own jobs; a job the runner runs
    from a definition needs ``operate``."""
    require(OPERATE if job.definition else frozenset((INGEST, OPERATE)))


@bp.patch("/jobs/<job_id>")
def patch_job(job_id):
    status = _status_from_body(JOB_STATUSES)
    job = jobops.get_job(job_id)
    _may_change(job)
    if status == "cancelled":
        audit("cancel", f"cancelled job {job_id} ({job.name!r})", job_id=job_id)
    runner = _runner()
    if status == "cancelled" and runner is not None and runner.cancel(job_id):
        return jsonify(job_json(jobops.get_job(job_id)))
    return jsonify(job_json(jobops.set_job_status(job_id, status)))


@bp.patch("/jobs/<job_id>/steps/<step_name>")
def patch_step(job_id, step_name):
    status = _status_from_body(STEP_STATUSES)
    _may_change(jobops.get_job(job_id))
    return jsonify(job_json(jobops.set_step_status(job_id, step_name, status)))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id):
    """202 for the one request that ends the job, 409 for a job that has ended: checked
    first, and again under the job's row lock (concurrent cancels pass the first check)."""
    job = jobops.get_job(job_id)
    if job.status not in ("pending", "running"):
        raise Conflict(f"job is {job.status}")
    runner = _runner()
    audit("cancel", f"cancelled job {job_id} ({job.name!r})", job_id=job_id)
    if runner is None or not runner.cancel(job_id):
        jobops.set_job_status(job_id, "cancelled", reason="cancelled by request", if_open=True)
    return jsonify(job_json(jobops.get_job(job_id))), 202


@bp.post("/jobs/<job_id>/rerun")
def rerun_job(job_id):
    job = jobops.get_job(job_id)
    runner = _runner()
    if not job.definition or runner is None:
        raise Conflict("only jobs started from a definition can be rerun")
    new = runner.start_job(job.definition)
    audit("rerun", f"reran job {job_id} ({job.definition!r}): job {new.id}", job_id=new.id,
          rerun_of=job_id, definition=job.definition)
    return jsonify(job_json(new)), 201


@bp.delete("/jobs/<job_id>")
def delete_job(job_id):
    job = jobops.get_job(job_id)
    name = job.name
    db.session.rollback()
    jobops.delete_job(job_id)
    audit("delete", f"deleted job {job_id} ({name!r})", job_id=job_id)
    return "", 204


@bp.get("/job-definitions")
def job_definitions():
    runner = _runner()
    found = runner.definitions_json() if runner else []
    who = principal()
    if who is not None and who.jobs is not None:  # a key limited to some jobs sees those
        found = [d for d in found if d.get("name") and who.may_job(d["name"], d["name"])]
    return jsonify(definitions=found)
