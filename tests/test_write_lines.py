"""The one write path, ``storage.write_lines``, straight: whatever a batch's size (SQLite
inserts ROWS_PER_INSERT rows a statement, the rest one at a time) and its mix of plain
lines and lines with attributes or ids (two statements), every line is stored once, in
order, with every field, and read back as it was published."""
import random
from datetime import datetime, timedelta

import pytest

from quaero.storage import ROWS_PER_INSERT, write_lines

SIZES = [1, 2, ROWS_PER_INSERT - 1, ROWS_PER_INSERT, ROWS_PER_INSERT + 1,
         2 * ROWS_PER_INSERT + 3]
START = datetime(2026, 12, 7, 5, 0)


def random_lines(rnd, n, job):
    def one(i):
        rich = rnd.random() < 0.3
        return {"job_id": job, "step_name": rnd.choice([None, "build"]) if job else None,
                "level": rnd.choice([10, 20, 30, 40]),
                "message": "".join(rnd.choice("ab Ü\t\\%ẞ\n") for _ in range(rnd.randrange(20))),
                "timestamp": START + timedelta(milliseconds=i),
                "source": rnd.choice([None, "stdout", "stderr"]),
                "attributes": rnd.choice([{"k": "v"}, {"n": 1, "ok": True}]) if rich else None,
                "trace_id": rnd.choice([None, "0af7651916cd43dd8448eb211c80319c"]) if rich else None,
                "span_id": rnd.choice([None, "b7ad6b7169203331"]) if rich else None}
    return [one(i) for i in range(n)]


@pytest.mark.parametrize("size", SIZES)
def test_every_line_of_a_batch_is_stored_once_in_order(any_app, size):
    c = any_app.test_client()
    job = c.post("/api/jobs", json={"name": "w", "steps": ["build"]}).json["id"]
    engine = any_app.extensions["quaero"].engine
    rnd = random.Random(size)
    for to_job in (True, False, True):
        lines = random_lines(rnd, size, job if to_job else None)
        with engine.begin() as conn:
            rows = write_lines(conn, lines)
        ids = [r["id"] for r in rows]
        assert ids == list(range(ids[0], ids[0] + size))
        query = {"scope": "job", "job_id": job} if to_job else {"scope": "service"}
        got = []
        while len(got) < size:  # (pages of the API's largest limit)
            page = c.get("/api/logs", query_string=dict(
                query, after=got[-1]["id"] if got else ids[0] - 1, limit=500,
                level="debug")).json["logs"]
            assert page
            got += page
        assert [ln for ln in got if ln["id"] <= ids[-1]] == rows
        for stored, sent in zip(got, lines):
            assert stored["message"] == sent["message"]
            assert stored["step_name"] == sent["step_name"]
            assert stored["source"] == sent["source"]
            assert stored.get("attributes") == sent["attributes"]
            assert stored.get("trace_id") == sent["trace_id"]
            assert stored.get("span_id") == sent["span_id"]
