"""``GET /api/logs/histogram``: log volume, the matching lines counted per time bucket and
level by the database (``quaero.histogram``), never by loading them. Same query and errors
as ``GET /api/logs``, plus ``buckets``; ``scope=all`` (with ``q``, as ``GET /api/search``:
every job and the service log, ``job_id`` may narrow it) draws the search page's results."""
import sqlalchemy as sa
from flask import Blueprint, jsonify, request

from ..errors import Invalid
from ..histogram import DEFAULT_BUCKETS, MAX_BUCKETS, log_histogram
from ..models import Job, db, utcnow
from .params import check_jobs_exist, db_deadline, parse_int, parse_query, parse_search

bp = Blueprint("histogram", __name__, url_prefix="/api")  # auth: web.auth, for all of /api


def parse_buckets(value):
    buckets = parse_int(value, "buckets")
    if buckets is None:
        return DEFAULT_BUCKETS
    if buckets < 1:
        raise Invalid(f"buckets must be 1 to {MAX_BUCKETS}")
    return min(buckets, MAX_BUCKETS)


@bp.get("/logs/histogram")
def histogram():
    if request.args.get("scope") == "all":
        f = parse_search(request.args)
    else:
        f, _limit = parse_query(request.args)
    buckets = parse_buckets(request.args.get("buckets"))
    until = None
    with db_deadline():
        with db.engine.connect() as conn:
            check_jobs_exist(conn, f.job_ids)
            if f.job_ids:
                running = conn.execute(sa.select(sa.func.count()).select_from(Job).where(
                    Job.id.in_(f.job_ids), Job.status == "running")).scalar()
                until = utcnow() if running else None
        return jsonify(log_histogram(db.engine, f, buckets, until=until))
