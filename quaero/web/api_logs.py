"""The logs API: ingest (``POST /api/logs``), the polling reads and the text download.
The stream is in ``stream.py`` beside it."""
import hashlib
from datetime import datetime, timezone

from flask import Blueprint, Response, jsonify, request

from ..attributes import MAX_KEY as MAX_ATTR_KEY
from ..errors import Invalid, TooLarge
from ..facets import facet_counts
from ..ingest import accepted_body
from ..models import LEVELS, db
from ..queries import LineFilter, count_matches, select_lines
from .lines import MAX_LINES_PER_REQUEST, answered, clean_lines, idempotency_key, store_lines
from .params import (check_jobs_exist, db_reading, json_object, let_others_run, parse_int,
                     parse_query, parse_search, read_body)

bp = Blueprint("logs", __name__, url_prefix="/api")  # auth: web.auth, for all of /api


@bp.post("/logs")
def post_logs():
    key = idempotency_key()
    body = read_body()
    digest = hashlib.sha256(body).hexdigest() if key else None
    if key:
        replay = answered(key, digest)
        if replay is not None:
            return replay
    data = json_object(body)
    items = data.get("logs")
    if not isinstance(items, list) or not items:
        raise Invalid("logs must be a non-empty list")
    if len(items) > MAX_LINES_PER_REQUEST:
        raise TooLarge(f"at most {MAX_LINES_PER_REQUEST} lines per request")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    lines = clean_lines(items, "logs", now)
    stored = store_lines(lines, key, digest)
    if isinstance(stored, Response):
        return stored
    first_id, last_id = stored
    return Response(accepted_body(len(lines), first_id, last_id), 201,
                    mimetype="application/json")


@bp.get("/logs")
def get_logs():
    f, limit = parse_query(request.args)
    after = parse_int(request.args.get("after"), "after")
    before = parse_int(request.args.get("before"), "before")
    with db_reading() as conn:
        check_jobs_exist(conn, f.job_ids)
        lines, more = select_lines(conn, f, after=after, before=before, limit=limit)
        total, capped = count_matches(conn, f)
        if not lines and after is not None:
            from ..queries import newest_id
            # an id beyond the newest (a database restored from a backup): a client that
            # resumed from it would wait for good; it resumes from the newest instead
            after = min(after, newest_id(conn))
    if lines:
        last_id = lines[-1]["id"]
    else:
        last_id = after if after is not None else None
    meta = {"total_count": total, "displayed_count": len(lines), "has_more": more}
    if capped:
        meta["total_count_capped"] = True
    return jsonify(logs=lines, last_id=last_id, meta=meta)


FACETS_LIMIT = 100


@bp.get("/logs/facets")
def get_facets():
    """The most frequent values of one attribute (or of source, level, step) among the
    lines the query's filters match: ``{"key", "values": [{"value", "count"}], "total"}``,
    counted over the newest 100,000 of them (``"sampled": true`` when there were more)."""
    args = request.args
    f = parse_search(args, required=False) if args.get("scope") == "all" else parse_query(args)[0]
    key = args.get("key")
    if not key or len(key) > MAX_ATTR_KEY or "\x00" in key:
        raise Invalid(f"key must be an attribute name (1 to {MAX_ATTR_KEY} characters), "
                      "source, level or step")
    limit = parse_int(args.get("limit"), "limit")
    limit = 10 if limit is None else limit
    if not 1 <= limit <= FACETS_LIMIT:
        raise Invalid(f"limit must be 1 to {FACETS_LIMIT}")
    with db_reading() as conn:
        check_jobs_exist(conn, f.job_ids)
        values, total, sampled = facet_counts(conn, f, key, limit)
    if sampled:  # counted over the newest FACET_SCAN matching lines only
        return jsonify(key=key, values=values, total=total, sampled=True)
    return jsonify(key=key, values=values, total=total)


@bp.get("/jobs/<job_id>/logs.txt")
def job_logs_txt(job_id):
    f = LineFilter(job_ids=(job_id,), min_level=LEVELS["debug"])
    engine = db.engine
    with db_reading() as conn:
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
            let_others_run()  # formatting a page holds the worker: others run between

    return Response(pages(), mimetype="text/plain", headers={
        "Content-Disposition": f'attachment; filename="job-{job_id}.log"'})


def format_text_line(line):
    step = f" [{line['step_name']}]" if line["step_name"] else ""
    message = line["message"].replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\n    ")
    return f"{line['timestamp']} {line['level'].upper():5}{step} {message}\n"
