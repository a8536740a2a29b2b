"""PostgreSQL: finished jobs' plain lines moved into compressed blocks (quaero.sealing)
change no answer of the API: every read answers the same before and after, and retention
still removes what it should."""
import itertools
import random

import pytest
import sqlalchemy as sa

from quaero.models import db
from quaero.sealing import BLOCK_LINES, seal_jobs
from tests.helpers import make_app, reset_pg

STEPS = ["build", "test", "step-518", "step-634"]   # the last two share a step key
WORDS = ["alpha", "beta", "gamma", "Delta", "ÉTÉ", "zeta%_"]


@pytest.fixture
def pg_app(pg_database, tmp_path):
    reset_pg(pg_database)
    app = make_app(pg_database, tmp_path, QUAERO_SEAL_AFTER=0,
                   QUAERO_RETENTION_DAYS=0)
    yield app
    app.extensions["quaero"].close()


def _fill(c, rnd, jobs=3, lines=700):
    ids = []
    for j in range(jobs):
        job = c.post("/api/jobs", json={"name": f"job{j}", "steps": STEPS}).json["id"]
        ids.append(job)
    batch = []
    for i in range(lines * jobs):
        job = rnd.choice(ids)
        line = {"job_id": job, "message": f"{rnd.choice(WORDS)} line {i} {rnd.choice(WORDS)}",
                "level": rnd.choice(["debug", "info", "info", "info", "warn", "error"])}
        if rnd.random() < 0.8:
            line["step"] = rnd.choice(STEPS)
        if rnd.random() < 0.1:
            line["source"] = rnd.choice(["make", "pytest"])
        if rnd.random() < 0.05:
            line["attributes"] = {"k": rnd.choice(["a", "b"])}
        batch.append(line)
        if rnd.random() < 0.02:
            batch.append({"message": f"service {i} {rnd.choice(WORDS)}", "level": "info"})
        if len(batch) >= 200:
            assert c.post("/api/logs", json={"logs": batch}).status_code == 201
            batch = []
    # the search index takes whole blocks of 64 ids, and only indexed lines are sealed
    batch += [{"message": "filler", "level": "debug"} for _ in range(64)]
    assert c.post("/api/logs", json={"logs": batch}).status_code == 201
    return ids


def _finish(c, ids):
    for job in ids:
        assert c.patch(f"/api/jobs/{job}", json={"status": "completed"}).status_code == 200


def _index(app):
    from quaero.searchindex import index_behind
    last = None
    with app.app_context():
        while True:
            with db.engine.begin() as conn:
                mark = index_behind(conn)
            if mark == last:
                return
            last = mark


def _reads(c, ids, rnd):
    """Answers of many reads: pages of each filter, both ways, searches, counts, facets,
    histograms, downloads."""
    out = {}
    filters = [{}, {"level": "debug"}, {"level": "warn"}, {"step": "build"},
               {"step": "step-518"}, {"step": "step-634", "level": "debug"}, {"q": "alpha"},
               {"q": "été"}, {"q": "zeta%_"}, {"q": "li"}, {"source": "make"},
               {"attr.k": "a"}, {"q": "line 1", "step": "test"}]
    for job, flt in itertools.product(ids + [",".join(ids[:2])], filters):
        base = {"scope": "job", "job_id": job.split(","), **flt}
        for limit in (1, 7, 100, 5000):
            r = c.get("/api/logs", query_string={**base, "limit": limit})
            assert r.status_code == 200, r.json
            out[("page", job, str(flt), limit)] = r.json
        every = c.get("/api/logs", query_string={**base, "limit": 5000}).json["logs"]
        for anchor in rnd.sample(every, min(4, len(every))):
            for way in ("after", "before"):
                r = c.get("/api/logs", query_string={**base, way: anchor["id"], "limit": 13})
                out[(way, job, str(flt), anchor["id"])] = r.json
        if "," not in job:
            for key in ("step", "level", "source", "k"):
                out[("facet", job, str(flt), key)] = c.get(
                    "/api/logs/facets", query_string={**base, "key": key}).json
            out[("histogram", job, str(flt))] = c.get(
                "/api/logs/histogram", query_string={**base, "buckets": 17}).json
    for q in ("alpha", "delta", "line 3", "zz", "été"):
        for limit in (3, 50, 500):
            r = c.get("/api/search", query_string={"q": q, "limit": limit})
            out[("search", q, limit)] = r.json
            if r.json["next_before"]:
                out[("search-next", q, limit)] = c.get("/api/search", query_string={
                    "q": q, "limit": limit, "before": r.json["next_before"]}).json
    for job in ids:
        out[("txt", job)] = c.get(f"/api/jobs/{job}/logs.txt").data
        out[("job", job)] = c.get(f"/api/jobs/{job}").json
    return out


def _stored(app):
    with app.app_context(), db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM log_entries")).scalar()
        blocks, sealed = conn.execute(sa.text(
            "SELECT count(*), coalesce(sum(n), 0) FROM log_blocks")).one()
    return rows, blocks, sealed


@pytest.mark.parametrize("per_block", [BLOCK_LINES, 5])
def test_sealing_changes_no_answer(pg_app, per_block):
    """Blocks of 5 lines: a job has a hundred, and reads go through windows of a few
    blocks (queries.Windows), widened when a page comes back short."""
    rnd = random.Random(7)
    c = pg_app.test_client()
    ids = _fill(c, rnd)
    _finish(c, ids)
    _index(pg_app)
    before = _reads(c, ids, random.Random(1))
    rows_before, _, _ = _stored(pg_app)
    with pg_app.app_context():
        jobs, moved = seal_jobs(db.engine, seal_after=1e-6, per_block=per_block)
    rows, blocks, sealed = _stored(pg_app)
    assert jobs == len(ids) and moved == sealed > 1000
    assert rows == rows_before - sealed and blocks >= sealed // per_block
    after = _reads(c, ids, random.Random(1))
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    with pg_app.app_context():
        assert seal_jobs(db.engine, seal_after=1e-6) == (0, 0)   # the cursor moved on


def _sealed(app, seed, jobs, lines, per_block=None):
    """A store of ``jobs`` finished jobs, indexed, their plain lines sealed in blocks of
    ``per_block`` lines, or (None) by a pass of the app's own pruner."""
    c = app.test_client()
    ids = _fill(c, random.Random(seed), jobs=jobs, lines=lines)
    _finish(c, ids)
    _index(app)
    if per_block is None:
        pruner = app.extensions["quaero"].pruner
        pruner.seal_after = 1e-6
        pruner.run_once()
    else:
        with app.app_context():
            seal_jobs(db.engine, seal_after=1e-6, per_block=per_block)
    return c, ids


def _blocks_of(app, job_seq):
    with app.app_context(), db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM log_blocks WHERE job_seq = :s"),
                            {"s": job_seq}).scalar()


def test_lines_sent_after_sealing_and_a_job_removed_with_its_blocks(pg_app):
    c, ids = _sealed(pg_app, 3, jobs=2, lines=600)
    with pg_app.app_context(), db.engine.connect() as conn:
        seq = conn.execute(sa.text("SELECT seq FROM jobs WHERE id = :j"), {"j": ids[0]}).scalar()
    assert _blocks_of(pg_app, seq) > 0
    late = [{"job_id": ids[0], "message": f"late {i}", "step": "build", "level": "info"} for i in range(5)]
    assert c.post("/api/logs", json={"logs": late}).status_code == 201
    page = c.get("/api/logs", query_string={"scope": "job", "job_id": ids[0], "limit": 600}).json
    assert [ln["message"] for ln in page["logs"][-5:]] == [f"late {i}" for i in range(5)]
    ids_seen = [ln["id"] for ln in page["logs"]]
    assert ids_seen == sorted(ids_seen) and len(set(ids_seen)) == len(ids_seen)
    assert c.delete(f"/api/jobs/{ids[0]}").status_code == 204
    assert _blocks_of(pg_app, seq) == 0
    assert c.get("/api/logs", query_string={"scope": "job", "job_id": ids[0]}).status_code == 404
    # retention's removal counts the sealed lines it removes (pruning for room relies on it)
    from quaero.retention import remove_job
    total = sum(c.get(f"/api/jobs/{ids[1]}").json["log_counts"].values())
    with pg_app.app_context():
        assert remove_job(db.engine, ids[1]) == total


def test_the_id_allocator_is_never_behind_a_sealed_line(pg_app):
    from quaero.migrate import init_db
    c, ids = _sealed(pg_app, 9, jobs=1, lines=300)
    with pg_app.app_context(), db.engine.begin() as conn:
        newest = conn.execute(sa.text("SELECT max(last_id) FROM log_blocks")).scalar()
        conn.execute(sa.text("DELETE FROM log_entries"))   # only sealed lines left
        conn.execute(sa.text("UPDATE line_counters SET value = 1 WHERE key = '__id__'"))
    with pg_app.app_context():
        init_db(db.engine)   # a database restored in parts: the allocator is raised
    r = c.post("/api/logs", json={"logs": [{"job_id": ids[0], "level": "info", "message": "x"}]})
    assert r.status_code == 201 and r.json["first_id"] > newest


def test_a_lower_line_limit_trims_a_sealed_job(pg_app):
    from quaero.retention import prune_once
    c, ids = _sealed(pg_app, 5, jobs=1, lines=1500, per_block=7)
    whole = c.get("/api/logs", query_string={"scope": "job", "job_id": ids[0], "level": "debug",
                                             "limit": 5000}).json["logs"]
    with pg_app.app_context():
        prune_once(db.engine, max_lines_per_job=400)
    kept = c.get("/api/logs", query_string={"scope": "job", "job_id": ids[0], "level": "debug",
                                            "limit": 5000}).json
    assert kept["logs"] == whole[-400:]
    assert kept["meta"]["total_count"] == 400
