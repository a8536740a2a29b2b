"""Attributes, trace and span ids (the contract's "Attributes"): accepted per line by
POST /api/logs, returned with the line, filtered by ``attr.KEY=VALUE`` and ``trace_id`` on
the polling API, the search, the histogram and the facets, on SQLite (before and after
the search index has the lines) and PostgreSQL alike."""
import pytest

from quaero.attributes import value_matches, value_text, wanted_texts, wanted_values

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.fixture
def c(any_app):
    return any_app.test_client()


def index_everything(app):
    """SQLite: put every line into the search index (the writer does it when idle)."""
    from quaero.models import db
    from quaero.searchindex import index_behind
    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return
    with engine.begin() as conn:
        while True:
            before = index_behind(conn)
            if index_behind(conn) == before:
                break


def post(c, *lines):
    r = c.post("/api/logs", json={"logs": list(lines)})
    assert r.status_code == 201, r.json
    return r.json


def line(message, **kw):
    return {"level": kw.pop("level", "info"), "message": message, **kw}


LINES = [
    line("checkout failed", level="error", source="shop",
         attributes={"http.status_code": 500, "user.id": "42", "retry": False},
         trace_id=TRACE, span_id=SPAN),
    line("checkout ok", attributes={"http.status_code": 200, "user.id": "42", "ratio": 0.5}),
    line("login", attributes={"http.status_code": "500", "user.id": "7"}),
    line("plain line"),
    line("big number", attributes={"n": 500.0, "flag": True}),
]


def messages(r):
    assert r.status_code == 200, r.json
    body = r.json
    return [ln["message"] for ln in body.get("logs", body.get("results", []))]


def test_lines_keep_their_fields(c):
    post(c, *LINES)
    got = c.get("/api/logs?scope=service&level=debug").json["logs"]
    assert got[0]["attributes"] == {"http.status_code": 500, "user.id": "42", "retry": False}
    assert got[0]["trace_id"] == TRACE and got[0]["span_id"] == SPAN
    assert got[1]["attributes"]["ratio"] == 0.5 and "trace_id" not in got[1]
    assert "attributes" not in got[3]
    assert got[4]["attributes"] == {"n": 500.0, "flag": True}


@pytest.mark.parametrize("indexed", [False, True], ids=["unindexed", "indexed"])
def test_filters_on_every_read(c, any_app, indexed):
    post(c, *LINES)
    if indexed:
        index_everything(any_app)
    base = "/api/logs?scope=service"
    cases = {
        "attr.http.status_code=500": ["checkout failed", "login"],   # number and text
        "attr.http.status_code=500.0": ["checkout failed"],          # the number only
        "attr.user.id=42": ["checkout failed", "checkout ok"],
        "attr.user.id=42&attr.http.status_code=200": ["checkout ok"],
        "attr.retry=false": ["checkout failed"],
        "attr.flag=true": ["big number"],
        "attr.n=500": ["big number"],
        "attr.ratio=0.50": ["checkout ok"],
        "attr.user.id=4": [],
        "attr.missing=1": [],
        f"trace_id={TRACE}": ["checkout failed"],
        f"trace_id={TRACE.upper()}": ["checkout failed"],
        "trace_id=" + "0" * 32: [],
        "attr.user.id=42&q=ok": ["checkout ok"],
        "attr.user.id=42&level=error": ["checkout failed"],
    }
    for query, expected in cases.items():
        if "level=" not in query:
            query += "&level=debug"
        r = c.get(f"{base}&{query}")
        assert messages(r) == expected, query
        assert r.json["meta"]["total_count"] == len(expected), query
        # search: everything, newest first
        assert messages(c.get(f"/api/search?{query}")) == expected[::-1], query
        hist = c.get(f"/api/logs/histogram?scope=service&{query}")
        assert hist.status_code == 200 and hist.json["total"] == len(expected), query


def test_a_job_and_its_step(c, any_app):
    job = c.post("/api/jobs", json={"name": "j", "steps": ["a", "b"]}).json["id"]
    post(c, line("one", job_id=job, step="a", attributes={"k": "v"}),
         line("two", job_id=job, step="b", attributes={"k": "v"}),
         line("three", job_id=job, step="b", attributes={"k": "w"}))
    for _ in range(2):
        r = c.get(f"/api/logs?scope=job&job_id={job}&attr.k=v")
        assert messages(r) == ["one", "two"]
        assert messages(c.get(f"/api/logs?scope=job&job_id={job}&step=b&attr.k=v")) == ["two"]
        assert messages(c.get(f"/api/search?job_id={job}&attr.k=w")) == ["three"]
        index_everything(any_app)


def test_facets(c, any_app):
    post(c, *LINES)
    post(c, *[line(f"n{i}", attributes={"code": i % 3, "name": f"v{i % 2}"}) for i in range(12)])
    for _ in range(2):
        r = c.get("/api/logs/facets?scope=service&level=debug&key=code")
        assert r.status_code == 200, r.json
        assert r.json == {"key": "code", "values": [{"value": "0", "count": 4},
                                                    {"value": "1", "count": 4},
                                                    {"value": "2", "count": 4}], "total": 12}
        r = c.get("/api/logs/facets?scope=service&level=debug&key=http.status_code&limit=1")
        assert r.json["values"] == [{"value": "500", "count": 2}] and r.json["total"] == 3
        r = c.get("/api/logs/facets?scope=service&level=debug&key=name&attr.code=1")
        assert r.json["values"] == [{"value": "v0", "count": 2}, {"value": "v1", "count": 2}]
        r = c.get("/api/logs/facets?scope=service&key=level&level=debug")
        assert r.json["values"] == [{"value": "info", "count": 16}, {"value": "error", "count": 1}]
        r = c.get("/api/logs/facets?scope=service&key=source")
        assert r.json == {"key": "source", "values": [{"value": "shop", "count": 1}], "total": 1}
        r = c.get("/api/logs/facets?scope=all&key=retry")
        assert r.json["values"] == [{"value": "false", "count": 1}]
        r = c.get('/api/logs/facets?scope=service&key=we"ird')
        assert r.status_code == 200 and r.json["values"] == []
        index_everything(any_app)


def test_facets_count_the_newest_lines(c, monkeypatch):
    import quaero.facets
    monkeypatch.setattr(quaero.facets, "FACET_SCAN", 4)
    post(c, *[line(f"n{i}", attributes={"k": "old" if i < 3 else "new"}) for i in range(7)])
    r = c.get("/api/logs/facets?scope=service&key=k")
    assert r.json == {"key": "k", "values": [{"value": "new", "count": 4}], "total": 4,
                      "sampled": True}
    r = c.get("/api/logs/facets?scope=service&key=k&attr.k=old")
    assert r.json == {"key": "k", "values": [{"value": "old", "count": 3}], "total": 3}
    post(c, line("one more", attributes={"j": 1}))   # the newest 4 with attributes: 1 has j
    r = c.get("/api/logs/facets?scope=service&key=j")
    assert r.json == {"key": "j", "values": [{"value": "1", "count": 1}], "total": 1,
                      "sampled": True}


@pytest.mark.parametrize("field, value, status", [
    ("attributes", "text", 400),
    ("attributes", [1, 2], 400),
    ("attributes", {"k": [1]}, 400),
    ("attributes", {"k": {"a": 1}}, 400),
    ("attributes", {"k": None}, 400),
    ("attributes", {"": 1}, 400),
    ("attributes", {"k" * 129: 1}, 400),
    ("attributes", {"k": "x" * 4097}, 400),
    ("attributes", {f"k{i}": i for i in range(65)}, 400),
    ("attributes", {f"k{i}": "x" * 3000 for i in range(6)}, 400),
    ("trace_id", "xyz", 400),
    ("trace_id", TRACE[:-1], 400),
    ("trace_id", 5, 400),
    ("span_id", TRACE, 400),
    ("span_id", "g" * 16, 400),
])
def test_bad_fields_store_nothing(c, field, value, status):
    r = c.post("/api/logs", json={"logs": [line("ok"), line("bad", **{field: value})]})
    assert r.status_code == status, r.json
    assert "logs[1]" in r.json["error"] and field in r.json["error"]
    assert c.get("/api/logs?scope=service&level=debug").json["logs"] == []


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_numbers_must_be_finite(c, value):
    body = '{"logs": [{"level": "info", "message": "x", "attributes": {"k": %s}}]}' % value
    r = c.post("/api/logs", data=body, content_type="application/json")
    assert r.status_code == 400 and "finite" in r.json["error"]


def test_good_edges(c):
    post(c, line("a", attributes={}, trace_id=None, span_id=""),
         line("b", attributes={"k" * 128: "x" * 4096, "é": "ü\x00"}, trace_id=TRACE.upper()))
    got = c.get("/api/logs?scope=service&level=debug").json["logs"]
    assert "attributes" not in got[0] and "trace_id" not in got[0] and "span_id" not in got[0]
    assert got[1]["attributes"] == {"k" * 128: "x" * 4096, "é": "ü\ufffd"}
    assert got[1]["trace_id"] == TRACE


@pytest.mark.parametrize("query", [
    "attr.=1", "attr." + "k" * 129 + "=1", "trace_id=abc", "trace_id=" + "g" * 32,
])
def test_bad_filters(c, query):
    r = c.get(f"/api/logs?scope=service&{query}")
    assert r.status_code == 400 and "error" in r.json
    assert c.get(f"/api/search?{query}").status_code == 400


def test_facets_refuse_bad_input(c):
    assert c.get("/api/logs/facets?scope=service").status_code == 400
    assert c.get("/api/logs/facets?scope=service&key=k&limit=0").status_code == 400
    assert c.get("/api/logs/facets?scope=service&key=k&limit=101").status_code == 400
    assert c.get("/api/logs/facets?scope=job&job_id=nope&key=k").status_code == 404
    assert c.get("/api/logs/facets?key=k").status_code == 400


def test_search_needs_something_to_look_for(c):
    assert c.get("/api/search").status_code == 400
    assert c.get("/api/search?attr.k=v").status_code == 200


def test_the_pure_rules():
    assert value_text(500.0) == "500" and value_text(True) == "true" and value_text(0.5) == "0.5"
    assert wanted_texts("500.0") == ["500.0", "500"] and wanted_texts("abc") == ["abc"]
    assert wanted_values("true") == ["true", True] and wanted_values("7") == ["7", 7]
    assert value_matches(500, "500") and value_matches(500, "5e2") and not value_matches(500, "50")
    assert value_matches("500", "500") and not value_matches("500", "500.0")
    assert not value_matches(True, "1") and not value_matches(1, "true")
    assert not value_matches(None, "")
