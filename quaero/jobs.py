"""Job and step state changes: valid transitions only, each one published on the bus."""
import logging

import sqlalchemy as sa

from .errors import Conflict, Invalid, JobNotFound, StepNotFound
from .models import (FINISHED, Job, LineCounter, LogCount, LogVolume, Step, db, deleted_payload,
                     new_id, next_job_seq, status_payload, step_name_problem, utcnow)

log = logging.getLogger("quaero.jobs")

JOB_NEXT = {
    "pending": {"running", "completed", "failed", "cancelled"},
    "running": {"completed", "failed", "cancelled"},
}
STEP_NEXT = {
    "pending": {"running", "completed", "failed", "cancelled", "skipped"},
    "running": {"completed", "failed", "cancelled"},
}


def _bus():
    from flask import current_app
    return current_app.extensions["quaero"].bus


def create_job(name, step_names, definition=None):
    for step_name in step_names:
        problem = step_name_problem(step_name)
        if problem:
            raise Invalid(problem)
    seq = next_job_seq(db.session.connection())
    job = Job(id=new_id(), seq=seq, name=name, definition=definition, status="pending",
              created_at=utcnow())
    job.steps = [Step(id=new_id(), name=s, position=i, status="pending")
                 for i, s in enumerate(step_names)]
    db.session.add(job)
    db.session.add(LineCounter(key=job.id, value=0, job_seq=seq))
    db.session.commit()
    return job


def get_job(job_id, lock=False):
    """``lock="update"`` for a status change: FOR NO KEY UPDATE, which does not block a
    concurrent write's foreign-key check on the job; ``lock=True`` (delete): FOR UPDATE.

    A locked read overwrites the session's copy of the job and its steps with the row it
    locked (``populate_existing``): a copy loaded earlier in the transaction (the API reads
    the job before it changes it) is what the row was before a concurrent change committed,
    and deciding on it made 20 concurrent cancels of one job cancel it up to 18 times."""
    q = sa.select(Job).where(Job.id == job_id)
    if lock == "update":
        q = q.with_for_update(key_share=True)
    elif lock:
        q = q.with_for_update()
    if lock:
        q = q.execution_options(populate_existing=True)
    job = db.session.execute(q).scalar_one_or_none()
    if job is None:
        raise JobNotFound()
    return job


def publish(job):
    _bus().publish_status(status_payload(job))


def _start(obj, now):
    obj.started_at = obj.started_at or now


def set_job_status(job_id, status, reason=None, if_open=False):
    """Move a job to ``status``; finishing a job settles its open steps. ``if_open``: a job
    that has already finished (``status`` included) is a Conflict, not an answer."""
    job = get_job(job_id, lock="update")
    if if_open and job.status in FINISHED:
        db.session.rollback()
        raise Conflict(f"job is {job.status}")
    if status == job.status:
        db.session.rollback()
        return job
    if status not in JOB_NEXT.get(job.status, ()):
        db.session.rollback()
        raise Conflict(f"job is {job.status}, it cannot become {status}")
    now = utcnow()
    job.status = status
    if status == "running":
        _start(job, now)
    if status in FINISHED:
        job.finished_at = now
        for step in job.steps:
            if step.status == "running":
                step.status = status
                step.finished_at = now
            elif step.status == "pending":
                step.status = "skipped"
    db.session.commit()
    _announce(job, reason)
    publish(job)
    return job


def set_step_status(job_id, step_name, status):
    job = get_job(job_id, lock="update")
    step = next((s for s in job.steps if s.name == step_name), None)
    if step is None:
        db.session.rollback()
        raise StepNotFound()
    if status == step.status:
        db.session.rollback()
        return job
    if job.status in FINISHED or status not in STEP_NEXT.get(step.status, ()):
        db.session.rollback()
        raise Conflict(f"step is {step.status} in a {job.status} job, "
                            f"it cannot become {status}")
    now = utcnow()
    step.status = status
    if status == "running":
        _start(step, now)
        if job.status == "pending":
            job.status = "running"
            _start(job, now)
            log.info("job %s (%s) started", job.id, job.name)
    else:
        _start(step, now)
        step.finished_at = now
    db.session.commit()
    publish(job)
    return job


def _announce(job, reason=None):
    verb = {"running": "started", "completed": "completed", "failed": "failed",
            "cancelled": "was cancelled"}[job.status]
    suffix = f": {reason}" if reason else ""
    level = logging.WARNING if job.status == "failed" else logging.INFO
    log.log(level, "job %s (%s) %s%s", job.id, job.name, verb, suffix)


def delete_job(job_id):
    # The writer locks a job's counter row, then the job row (foreign key check): take
    # them in the same order, or a delete and a write to the same job deadlock.
    db.session.execute(sa.select(LineCounter.key).where(LineCounter.key == job_id)
                       .with_for_update())
    job = get_job(job_id, lock=True)
    if job.status == "running":
        db.session.rollback()
        raise Conflict("job is running; cancel it first")
    db.session.execute(sa.delete(LogCount).where(LogCount.key == job.id))
    db.session.execute(sa.delete(LogVolume).where(LogVolume.key == job.id))
    db.session.execute(sa.delete(LineCounter).where(LineCounter.key == job.id))
    db.session.delete(job)
    db.session.commit()
    log.info("job %s (%s) deleted", job_id, job.name)
    _bus().publish_status(deleted_payload(job_id))
