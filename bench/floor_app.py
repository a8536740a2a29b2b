"""The Flask floor for ``bench/request_cost.py``: the least a Flask app on the same gunicorn
gevent worker can do for Quaero's two commonest requests.

    cd bench && FLOOR_DB=/tmp/x.db gunicorn -k gevent -b 127.0.0.1:5001 floor_app:app

- ``POST /api/logs``: parse the JSON body, validate each line (level, message, job id and
  step as strings), one SQLite transaction into a table with the same three indexes as
  ``log_entries``; answer ``201 {"accepted", "first_id", "last_id"}``.
- ``GET /api/logs?job_id=X&limit=N``: the last N lines of a job, oldest first, as JSON
  with the same fields as Quaero's lines.
- ``GET /api/logs/stream``: an idle stream (one ``logs`` event, then nothing), so that the
  bench can hold the same number of idle connections open on both servers.

No job check, counters, counts, auth hooks or pub/sub: those are Quaero's to justify.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import gevent  # noqa: E402
from flask import Flask, Response, jsonify, request  # noqa: E402

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
LEVEL_NAMES = {v: k for k, v in LEVELS.items()}

app = Flask(__name__)
db = sqlite3.connect(os.environ.get("FLOOR_DB", "floor.db"), isolation_level=None,
                     check_same_thread=False)
for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000"):
    db.execute("PRAGMA " + pragma)
db.executescript("""
CREATE TABLE IF NOT EXISTS log_entries (
    id INTEGER PRIMARY KEY, job_id VARCHAR(32), step_name VARCHAR(200),
    level SMALLINT NOT NULL, message TEXT NOT NULL, timestamp DATETIME NOT NULL,
    line_number INTEGER NOT NULL, source VARCHAR(200));
CREATE INDEX IF NOT EXISTS ix_log_job_id ON log_entries (job_id, id);
CREATE INDEX IF NOT EXISTS ix_log_job_step_id ON log_entries (job_id, step_name, id);
CREATE INDEX IF NOT EXISTS ix_log_job_level_id ON log_entries (job_id, level, id);
""")


def bad(status, message):
    response = jsonify(error=message)
    response.status_code = status
    return response


@app.post("/api/logs")
def post_logs():
    try:
        items = json.loads(request.get_data())["logs"]
    except (ValueError, KeyError, TypeError):
        return bad(400, "body must be a JSON object with logs")
    now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    rows = []
    for item in items:
        level = LEVELS.get(item.get("level"))
        message, job_id, step = item.get("message"), item.get("job_id"), item.get("step")
        if level is None or not isinstance(message, str) or not isinstance(job_id, (str, type(None))) \
                or not isinstance(step, (str, type(None))):
            return bad(400, "bad line")
        rows.append((job_id, step, level, message, now, 0))
    db.execute("BEGIN IMMEDIATE")
    try:
        last = db.execute("SELECT coalesce(max(id), 0) FROM log_entries").fetchone()[0]
        db.executemany("INSERT INTO log_entries (job_id, step_name, level, message, timestamp, "
                       "line_number) VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return jsonify(accepted=len(rows), first_id=last + 1, last_id=last + len(rows)), 201


@app.get("/api/logs")
def get_logs():
    limit = int(request.args.get("limit", 100))
    rows = db.execute("SELECT id, job_id, step_name, level, message, timestamp, line_number, "
                      "source FROM log_entries WHERE job_id = ? AND level + 0 >= 20 "
                      "ORDER BY id DESC LIMIT ?", (request.args["job_id"], limit + 1)).fetchall()
    more = len(rows) > limit
    lines = [{"id": r[0], "timestamp": r[5][:23].replace(" ", "T") + "Z",
              "level": LEVEL_NAMES[r[3]], "message": r[4], "job_id": r[1], "step_name": r[2],
              "line_number": r[6], "source": r[7]} for r in reversed(rows[:limit])]
    return jsonify(logs=lines, last_id=lines[-1]["id"] if lines else None,
                   meta={"total_count": None, "displayed_count": len(lines), "has_more": more})


@app.get("/api/logs/stream")
def idle_stream():
    def events():
        yield "retry: 3000\n\nevent: logs\ndata: {}\n\n"
        while True:
            gevent.sleep(3600)
    return Response(events(), mimetype="text/event-stream")


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")
