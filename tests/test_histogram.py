"""``GET /api/logs/histogram``: log volume per time bucket and level, on SQLite and
PostgreSQL; from the lines (short logs, ``q``) and from the roll-up (``log_volume``)."""
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from quaero.histogram import bucket_plan

# yesterday at 10:00: a fixed date would age past the retention (30 days by default) and
# the app's own pruner would take the service lines between a post and the count
T0 = datetime.now(timezone.utc).replace(tzinfo=None, hour=10, minute=0, second=0,
                                        microsecond=0) - timedelta(days=1)


@pytest.fixture
def c(any_app):
    return any_app.test_client()


def job(c, status=None, steps=("build", "test")):
    jid = c.post("/api/jobs", json={"name": "h", "steps": list(steps)}).json["id"]
    if status:
        assert c.patch(f"/api/jobs/{jid}", json={"status": status}).status_code == 200
    return jid


def post(c, lines):
    r = c.post("/api/logs", json={"logs": lines})
    assert r.status_code == 201, r.json


def at(offset_ms):
    return (T0 + timedelta(milliseconds=offset_ms)).isoformat(timespec="milliseconds") + "Z"


def hist(c, query):
    r = c.get("/api/logs/histogram?" + query)
    assert r.status_code == 200, r.json
    body = r.json
    assert sum(sum(b["counts"].values()) for b in body["buckets"]) == body["total"]
    return body


def per_bucket(body, level):
    return [b["counts"][level] for b in body["buckets"]]


def test_bucket_plan_is_equal_widths_that_hold_the_last():
    assert bucket_plan(0, 1000, 10) == (0, 101, 10)
    assert bucket_plan(0, 999, 10) == (0, 100, 10)
    assert bucket_plan(0, 5, 60) == (0, 1, 6)       # never narrower than one unit
    assert bucket_plan(7, 7, 60) == (7, 1, 1)
    assert bucket_plan(0, 110, 10) == (0, 12, 10)


def test_short_log_in_millisecond_buckets(c):
    jid = job(c)
    post(c, [{"level": "info", "message": f"i{k}", "job_id": jid, "step": "build",
              "timestamp": at(k * 100)} for k in range(10)]            # 0 .. 900 ms
             + [{"level": "error", "message": "boom", "job_id": jid, "step": "test",
                 "timestamp": at(950)},
                {"level": "debug", "message": "dbg", "job_id": jid, "timestamp": at(10)}])
    body = hist(c, f"scope=job&job_id={jid}&buckets=10&level=debug")
    assert body["total"] == 12
    assert [b["start"] for b in body["buckets"][:2]] == [at(0), at(96)]
    assert body["buckets"][-1]["end"] == at(960)
    assert per_bucket(body, "info") == [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert per_bucket(body, "debug") == [1] + [0] * 9
    assert per_bucket(body, "error") == [0] * 9 + [1]
    # the default level is info; level=X is X and above; step and q narrow it
    assert hist(c, f"scope=job&job_id={jid}&buckets=10")["total"] == 11
    assert hist(c, f"scope=job&job_id={jid}&level=error")["total"] == 1
    assert hist(c, f"scope=job&job_id={jid}&step=build")["total"] == 10
    assert hist(c, f"scope=job&job_id={jid}&q=BOO")["total"] == 1
    assert hist(c, f"scope=job&job_id={jid}&q=nowhere") == {"buckets": [], "total": 0}


def volume_rows(app, key):
    from quaero.models import db
    with app.app_context(), db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT step_name, level, second, count FROM log_volume "
                                    "WHERE key = :k ORDER BY step_name, level, second"),
                            {"k": key}).all()


def test_long_log_from_the_per_second_counts_the_writes_keep(c, any_app):
    jid = job(c)
    lines = [{"level": "warn" if k % 3 == 0 else "info", "message": f"l{k}", "job_id": jid,
              "step": "build", "timestamp": at(k * 10_000)} for k in range(12)]  # 0 .. 110 s
    post(c, lines[:5])
    post(c, lines[5:])
    t0 = int((T0 - datetime(1970, 1, 1)).total_seconds())
    # counted by the write, before any histogram was asked for
    assert volume_rows(any_app, jid) == sorted(
        [("build", 30, t0, 1), ("build", 30, t0 + 30, 1), ("build", 30, t0 + 60, 1),
         ("build", 30, t0 + 90, 1)]
        + [("build", 20, t0 + k * 10, 1) for k in range(12) if k % 3])
    body = hist(c, f"scope=job&job_id={jid}&buckets=10")
    assert len(body["buckets"]) == 10 and body["total"] == 12
    assert body["buckets"][0]["start"] == at(0) and body["buckets"][0]["end"] == at(12_000)
    # line k at 10k s: bucket 10k // 12
    assert per_bucket(body, "info") == [1, 1, 0, 1, 1, 1, 1, 0, 1, 1]
    assert per_bucket(body, "warn") == [1, 0, 1, 0, 0, 1, 0, 1, 0, 0]
    assert len(volume_rows(any_app, jid)) == 12   # the answer came from log_volume
    post(c, [{"level": "error", "message": "late", "job_id": jid, "step": "test",
              "timestamp": at(115_000)}])
    body = hist(c, f"scope=job&job_id={jid}&buckets=10")
    assert body["total"] == 13 and per_bucket(body, "error")[-1] == 1
    assert hist(c, f"scope=job&job_id={jid}&buckets=10")["total"] == 13   # counted once
    assert hist(c, f"scope=job&job_id={jid}&step=test")["total"] == 1
    assert hist(c, f"scope=job&job_id={jid}&level=warn")["total"] == 5
    post(c, [{"level": "error", "message": "later", "job_id": jid, "step": "test",
              "timestamp": at(115_400)}])       # the same second: the same row, counted up
    assert volume_rows(any_app, jid)[-1] == ("test", 40, t0 + 115, 2)
    assert hist(c, f"scope=job&job_id={jid}&step=test")["total"] == 2
    # a deleted job's counts go with it
    assert c.delete(f"/api/jobs/{jid}").status_code == 204
    assert volume_rows(any_app, jid) == []


def test_pruned_lines_leave_the_histogram(c, any_app):
    from quaero.models import db
    from quaero.retention import prune_once
    jid = job(c)
    post(c, [{"level": "info", "message": f"l{k}", "job_id": jid, "timestamp": at(k * 1000)}
             for k in range(100)])
    assert hist(c, f"scope=job&job_id={jid}")["total"] == 100
    with any_app.app_context():
        prune_once(db.engine, max_lines_per_job=40)
    body = hist(c, f"scope=job&job_id={jid}")
    assert body["total"] == 40 and body["buckets"][0]["start"] == at(60_000)
    rows = volume_rows(any_app, jid)  # taken off per second; none left at zero
    assert [r[3] for r in rows] == [1] * 40 and rows[0][2] - rows[-1][2] == -39


def test_service_log_and_a_running_job_reach_now(c):
    post(c, [{"level": "warn", "message": "svc", "timestamp": at(0)},
              {"level": "info", "message": "svc2", "timestamp": at(500)}])
    body = hist(c, "scope=service")
    assert body["total"] == 2 and body["buckets"][0]["start"] == at(0)
    assert body["buckets"][-1]["end"] == at(540)       # 60 buckets of 9 ms hold 0 .. 500 ms
    jid = job(c, status="running")
    post(c, [{"level": "info", "message": "old", "job_id": jid, "timestamp": at(0)}])
    body = hist(c, f"scope=job&job_id={jid}")
    end = datetime.fromisoformat(body["buckets"][-1]["end"].rstrip("Z"))
    assert end >= datetime.utcnow() - timedelta(seconds=5)   # to now, not to the last line
    assert body["total"] == 1 and len(body["buckets"]) <= 60


def test_errors_as_get_api_logs(c):
    jid = job(c)
    for query, status in [("", 400), ("scope=nope", 400), ("scope=job", 400),
                          ("scope=service&step=x", 400), (f"scope=job&job_id={jid}&level=loud", 400),
                          (f"scope=job&job_id={jid}&buckets=0", 400),
                          (f"scope=job&job_id={jid}&buckets=-3", 400),
                          (f"scope=job&job_id={jid}&buckets=x", 400),
                          (f"scope=job&job_id={jid}&q=", 400),
                          ("scope=job&job_id=nosuchjob", 404)]:
        r = c.get("/api/logs/histogram?" + query)
        assert r.status_code == status, (query, r.json)
        assert "error" in r.json
    post(c, [{"level": "info", "message": f"l{k}", "job_id": jid, "timestamp": at(k)}
             for k in range(1000)])
    body = hist(c, f"scope=job&job_id={jid}&buckets=100000")   # at most 500
    assert len(body["buckets"]) == 500 and body["total"] == 1000
    assert len(hist(c, f"scope=job&job_id={jid}")["buckets"]) == 60


def test_scope_all_counts_search_matches_everywhere(c):
    a, b = job(c), job(c)
    post(c, [{"level": "info", "message": "needle one", "job_id": a, "timestamp": at(0)},
             {"level": "error", "message": "Needle two", "job_id": b, "timestamp": at(100)},
             {"level": "debug", "message": "needle svc", "timestamp": at(200)},
             {"level": "info", "message": "hay", "timestamp": at(300)}])
    assert hist(c, "scope=all&q=needle")["total"] == 3
    assert hist(c, f"scope=all&q=needle&job_id={b}")["total"] == 1
    assert hist(c, "scope=all&q=needle&level=error")["total"] == 1
    assert c.get("/api/logs/histogram?scope=all").status_code == 400      # q is required


def test_in_the_openapi_document(c):
    doc = c.get("/api/openapi.json").json
    op = doc["paths"]["/api/logs/histogram"]["get"]
    assert {p["name"] for p in op["parameters"]} >= {"scope", "job_id", "step", "level", "q",
                                                      "buckets"}
    assert "Histogram" in doc["components"]["schemas"]


# -- the histogram against a plain model of it -------------------------------------------------

def model_histogram(lines, buckets, until=None):
    """What the histogram of ``lines`` (``(timestamp, level)``) is, by the rule the API
    documents: equal buckets of whole milliseconds from the first line's millisecond,
    the last holding the last line (or ``until``, when later)."""
    if not lines:
        return {"buckets": [], "total": 0}
    first, last = min(t for t, _ in lines), max(t for t, _ in lines)
    if until is not None and until > last:
        last = until
    t0 = first.replace(microsecond=first.microsecond // 1000 * 1000)
    _, width_ms, n = bucket_plan(0, (last - t0) // timedelta(milliseconds=1), buckets)
    width = timedelta(milliseconds=width_ms)
    counts = [dict.fromkeys(("debug", "info", "warn", "error"), 0) for _ in range(n)]
    for t, level in lines:
        counts[min((t - t0) // width, n - 1)][level] += 1
    iso = lambda d: d.isoformat(timespec="milliseconds") + "Z"  # noqa: E731
    return {"buckets": [{"start": iso(t0 + i * width), "end": iso(t0 + (i + 1) * width),
                         "counts": counts[i]} for i in range(n)], "total": len(lines)}


@pytest.mark.parametrize("seed", range(3))
def test_the_histogram_of_lines_is_the_models(c, any_app, seed):
    """Random lines (times a millisecond to days apart, levels, words) in a job and the
    service log; the histogram of a job, of a search in it and everywhere, at several
    bucket counts, is the model's. (Searches are counted from the lines: every bucket's
    edge is the model's to the millisecond.)"""
    import random
    rnd = random.Random(seed)
    jid = job(c)
    spread = rnd.choice([5, 5_000, 90_000_000])   # milliseconds the lines spread over
    sent = []
    for target in (jid, None):
        lines = [{"level": rnd.choice(["debug", "info", "warn", "error"]),
                  "message": " ".join(rnd.choice(["alpha", "Beta", "gamma", "DELTA"])
                                      for _ in range(rnd.randrange(1, 4))),
                  "timestamp": at(rnd.randrange(spread) + rnd.random())}
                 for _ in range(rnd.randrange(1, 300))]
        if target:
            for ln in lines:
                ln["job_id"] = target
        post(c, lines)
        sent += [(target, ln) for ln in lines]

    def when(ln):
        return datetime.fromisoformat(ln["timestamp"][:-1])

    for buckets in (1, 7, 60, 500):
        for q in (None, "beta", "a d"):
            for scope in ("job", "all"):
                if scope == "all" and q is None:
                    continue
                query = f"buckets={buckets}&level=debug&" + (
                    f"scope=job&job_id={jid}" if scope == "job" else "scope=all")
                if q:
                    query += f"&q={q.replace(' ', '%20')}"
                mine = [(when(ln), ln["level"]) for target, ln in sent
                        if (scope == "all" or target == jid)
                        and (q is None or q in ln["message"].lower())]
                got = hist(c, query)
                if q is None and scope == "job" and got["buckets"] and spread > 1000:
                    continue  # (whole seconds from the per-second counts: test_long_log_...)
                assert got == model_histogram(mine, buckets), (buckets, q, scope)
