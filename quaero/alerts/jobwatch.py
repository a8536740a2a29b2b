"""The rules about jobs: ``job_failed`` (a job of a matching definition ended failed, or
cancelled if asked) and ``long_running`` (one has run longer than ``longer_than``). Job
ends are read from the database (whatever process ended the job, with Redis or without),
from a little before the last read (a job end committed late is still seen); a notice's
key is its rule and job, so each job is notified once per rule."""
from datetime import timedelta

from ..levels import LEVELS
from ..models import from_millis, iso
from ..queries import LineFilter, select_lines
from . import engine, store

SLACK = timedelta(seconds=60)


def job_notices(db, rules, since_ms, now_ms, pending_keys):
    """The notices about jobs due at ``now_ms`` (epoch ms) for ``rules``, job ends read
    from ``since_ms`` on; none already recorded (or in ``pending_keys``)."""
    failed = [r for r in rules if r.kind == "job_failed"]
    slow = [r for r in rules if r.kind == "long_running"]
    found = []   # (rule, job row)
    read_at = from_millis(now_ms)
    if failed:
        statuses = ("failed", "cancelled") if any(r.cancelled for r in failed) else ("failed",)
        for job in store.jobs_ended_since(db, from_millis(since_ms) - SLACK, statuses):
            found += [(r, job) for r in failed if r.matches_job(job.name, job.definition)
                      and (job.status == "failed" or r.cancelled)]
    if slow:
        longest = min(r.longer_than for r in slow)
        for job in store.jobs_running_since(db, read_at - timedelta(seconds=longest)):
            found += [(r, job) for r in slow if r.matches_job(job.name, job.definition)
                      and job.started_at <= read_at - timedelta(seconds=r.longer_than)]
    if not found:
        return []
    candidates = {engine.job_notice(r, job_json(j), now_ms).key: (r, j) for r, j in found}
    with db.connect() as conn:
        known = store.existing_keys(conn, candidates) | set(pending_keys)
    notices = []
    for key, (rule, job) in candidates.items():
        if key not in known:
            lines = error_lines(db, job.id) if rule.kind == "job_failed" else []
            notices.append(engine.job_notice(rule, job_json(job), now_ms, lines))
    return notices


def error_lines(db, job_id):
    """The job's last few error lines (what a ``job_failed`` notice shows)."""
    with db.connect() as conn:
        lines, _ = select_lines(conn, LineFilter(job_ids=(job_id,), min_level=LEVELS["error"]),
                                limit=engine.FIRST_LINES)
    return lines


def job_json(row):
    return {"id": row.id, "name": row.name, "definition": row.definition, "status": row.status,
            "created_at": iso(row.created_at), "started_at": iso(row.started_at),
            "finished_at": iso(row.finished_at)}
