"""``GET /api/search``: lines that contain a text, across every job and the service log,
newest first, paged back with ``before``. The same read as the logs API
(``select_lines`` with a ``LineFilter``), over every line instead of one job's."""
import sqlalchemy as sa
from flask import Blueprint, jsonify, request

from ..errors import Invalid
from ..models import Job
from ..queries import select_lines
from .params import check_jobs_exist, db_reading, parse_int, parse_search

bp = Blueprint("search", __name__, url_prefix="/api")  # auth: web.auth, for all of /api

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@bp.get("/search")
def search():
    args = request.args
    f = parse_search(args)
    limit = parse_int(args.get("limit"), "limit")
    limit = DEFAULT_LIMIT if limit is None else limit
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be 1 to {MAX_LIMIT}")
    before = parse_int(args.get("before"), "before")
    with db_reading() as conn:
        check_jobs_exist(conn, f.job_ids)
        lines, more = select_lines(conn, f, before=before, limit=limit)
        ids = {line["job_id"] for line in lines if line["job_id"]}
        jobs = conn.execute(sa.select(Job.id, Job.name, Job.status)
                            .where(Job.id.in_(ids))).all() if ids else []
    lines.reverse()
    return jsonify(results=lines,
                   jobs={j.id: {"name": j.name, "status": j.status} for j in jobs},
                   next_before=lines[-1]["id"] if more else None)
