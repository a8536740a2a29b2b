"""Archive before delete: a finished job as one gzip-compressed NDJSON file, and back.

``QUAERO_ARCHIVE_DIR/<job id>.ndjson.gz``. The first line is the job:
``{"quaero_archive": 1, "job": {"id", "name", "definition", "status", "created_at",
"started_at", "finished_at", "steps": [{"id", "name", "status", "started_at",
"finished_at"}]}, "lines": n}``; then one line per log line, oldest first: ``{"id",
"timestamp", "level", "message", "step", "line_number", "source"}`` (times as the API
gives them), and ``attributes``, ``trace_id``, ``span_id`` where the line has them. Read with ``zcat`` and ``jq``; ``quaero import FILE`` brings the job back.

A file is written under a temporary name, flushed to the disk (fsync) and renamed: a file
with the final name is whole. When it cannot be written (a full disk), the pruner keeps
the job (quaero/retention.py).
"""
import gzip
import os
import tempfile
from datetime import datetime, timezone

import orjson
import sqlalchemy as sa

from .models import FINISHED, LEVELS, Job, Step, counters_t, counts_t, iso, next_job_seq
from .queries import LineFilter, select_lines
from .searchindex import index_behind
from .storage import write_lines

FORMAT = 1
PAGE = 5000    # lines read, written or imported at a time
SUFFIX = ".ndjson.gz"
_jobs_t, _steps_t = Job.__table__, Step.__table__


class ArchiveRefused(Exception):
    """A file that cannot be imported; its message says why, in one line."""


def archive_path(directory, job_id):
    return os.path.join(directory, job_id + SUFFIX)


def _job_header(conn, job_id):
    job = conn.execute(sa.select(_jobs_t).where(_jobs_t.c.id == job_id)).mappings().first()
    if job is None:
        raise LookupError(f"job {job_id} not found")
    steps = conn.execute(sa.select(_steps_t).where(_steps_t.c.job_id == job_id)
                         .order_by(_steps_t.c.position)).mappings().all()
    return {"id": job["id"], "name": job["name"], "definition": job["definition"],
            "status": job["status"], "created_at": iso(job["created_at"]),
            "started_at": iso(job["started_at"]), "finished_at": iso(job["finished_at"]),
            "steps": [{"id": s["id"], "name": s["name"], "status": s["status"],
                       "started_at": iso(s["started_at"]), "finished_at": iso(s["finished_at"])}
                      for s in steps]}


class Archiver:
    """``archiver(engine, job_id)`` writes the job's file into ``directory`` (the
    pruner's ``archive``); returns its path. ``pause``: called between two pages."""

    def __init__(self, directory, pause=None):
        self.directory = directory
        self.pause = pause

    def __call__(self, engine, job_id):
        return write_archive(engine, job_id, self.directory, self.pause)


def write_archive(engine, job_id, directory, pause=None):
    """Write job ``job_id`` with its steps and every line to ``directory``; returns the
    file's path. Raises OSError when it cannot (nothing is left under the final name)."""
    os.makedirs(directory, exist_ok=True)
    path = archive_path(directory, job_id)
    f = LineFilter(job_ids=(job_id,), min_level=LEVELS["debug"])
    with engine.connect() as conn:
        job = _job_header(conn, job_id)
        total = int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(counts_t.c.count), 0))
                                 .where(counts_t.c.key == job_id)).scalar())  # PostgreSQL: a Decimal
    fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix=f".{job_id}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename=job_id + ".ndjson", mode="wb", fileobj=raw, mtime=0) as gz:
                gz.write(orjson.dumps({"quaero_archive": FORMAT, "job": job, "lines": total})
                         + b"\n")
                after = 0
                while True:
                    with engine.connect() as conn:
                        lines, more = select_lines(conn, f, after=after, limit=PAGE)
                    gz.write(b"".join(orjson.dumps(_record(ln)) + b"\n" for ln in lines))
                    if not more:
                        break
                    after = lines[-1]["id"]
                    if pause is not None:
                        pause()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- import ------------------------------------------------------------------------------

def _time(text):
    """An API time (``…Z``) as the database stores it: naive UTC."""
    if text is None:
        return None
    return datetime.fromisoformat(text).astimezone(timezone.utc).replace(tzinfo=None)


def read_archive(path):
    """``(job, lines)``: the header's job and an iterator over the file's line records.
    ArchiveRefused for a file that is not a Quaero archive."""
    try:
        gz = gzip.open(path, "rb")
        first = gz.readline()
        header = orjson.loads(first)
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise ArchiveRefused(f"{path}: not a Quaero archive ({exc})") from None
    if not isinstance(header, dict) or header.get("quaero_archive") != FORMAT:
        gz.close()
        raise ArchiveRefused(f"{path}: not a Quaero archive (format {FORMAT})")

    def lines():
        with gz:
            for raw in gz:
                if raw.strip():
                    yield orjson.loads(raw)
    return header["job"], lines()


def import_archive(engine, path):
    """Bring the archived job back: the same id, name, status, times and steps, and its
    lines with the same messages, levels, steps, timestamps, sources and line numbers
    (new line ids, from the id counter, through the write path: counts, volume and the
    search index follow). Refused (ArchiveRefused, nothing changed) while a job with its
    id exists. Returns ``(job, lines imported)``."""
    job, records = read_archive(path)
    if job.get("status") not in FINISHED:
        raise ArchiveRefused(f"{path}: job {job.get('id')} is {job.get('status')}, not finished")
    with engine.begin() as conn:
        if conn.execute(sa.select(_jobs_t.c.id).where(_jobs_t.c.id == job["id"])).first():
            raise ArchiveRefused(f"{path}: job {job['id']} ({job['name']}) exists already; "
                                 "nothing imported (delete it first to import it again)")
        seq = next_job_seq(conn)  # a new number: the job's lines refer to it
        conn.execute(_jobs_t.insert().values(
            id=job["id"], seq=seq, name=job["name"], definition=job.get("definition"),
            status=job["status"], created_at=_time(job["created_at"]),
            started_at=_time(job.get("started_at")), finished_at=_time(job.get("finished_at"))))
        if job["steps"]:
            conn.execute(_steps_t.insert(), [
                {"id": s["id"], "job_id": job["id"], "position": i, "name": s["name"],
                 "status": s["status"], "started_at": _time(s.get("started_at")),
                 "finished_at": _time(s.get("finished_at"))} for i, s in enumerate(job["steps"])])
        conn.execute(counters_t.insert().values(key=job["id"], value=0, job_seq=seq))
    try:
        n = _import_lines(engine, job["id"], records)
    except BaseException:
        from .retention import remove_job  # a half-imported job goes: the file stays
        remove_job(engine, job["id"])
        raise
    _index(engine)
    return job, n


_FIELDS = ("attributes", "trace_id", "span_id")


def _record(ln):
    """A line as the archive keeps it."""
    rec = {"id": ln["id"], "timestamp": ln["timestamp"], "level": ln["level"],
           "message": ln["message"], "step": ln["step_name"],
           "line_number": ln["line_number"], "source": ln["source"]}
    rec.update((k, ln[k]) for k in _FIELDS if k in ln)
    return rec


def _import_lines(engine, job_id, records):
    n, page = 0, []
    for rec in records:
        page.append({"job_id": job_id, "step_name": rec.get("step"),
                     "level": LEVELS[rec["level"]], "message": rec["message"],
                     "timestamp": _time(rec["timestamp"]), "source": rec.get("source"),
                     "line_number": rec["line_number"], "attributes": rec.get("attributes"),
                     "trace_id": rec.get("trace_id"), "span_id": rec.get("span_id")})
        if len(page) == PAGE:
            n += _write_page(engine, job_id, page)
            page = []
    if page:
        n += _write_page(engine, job_id, page)
    return n


def _write_page(engine, job_id, page):
    """One transaction: each run of consecutive line numbers written after the job's
    counter is set just before its first, so that the write path numbers them as they
    were (lines pruned from a job's start, QUAERO_MAX_LINES_PER_JOB, leave a gap)."""
    with engine.begin() as conn:
        start = 0
        for i in range(1, len(page) + 1):
            if i == len(page) or page[i]["line_number"] != page[i - 1]["line_number"] + 1:
                run = page[start:i]
                conn.execute(counters_t.update().where(counters_t.c.key == job_id)
                             .values(value=run[0]["line_number"] - 1))
                write_lines(conn, [{k: v for k, v in ln.items() if k != "line_number"}
                                   for ln in run])
                start = i
    return len(page)


def _index(engine):
    """Index the imported lines for search now (the server's writer indexes only
    behind its own writes; searches scan what is not indexed meanwhile)."""
    mark = None
    while True:
        with engine.begin() as conn:
            indexed = index_behind(conn)
        if indexed == mark:
            return
        mark = indexed
