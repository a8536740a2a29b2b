"""Search: ``q`` on GET /api/logs and the stream, and GET /api/search, on SQLite and
PostgreSQL (the same expected results on both)."""
import httpx
import pytest

from quaero.queries import LineFilter
from tests.sse_client import SSEClient
from tests.helpers import eventually


@pytest.fixture
def c(any_app):
    return any_app.test_client()


def new_job(c, name="demo", steps=("build", "test")):
    r = c.post("/api/jobs", json={"name": name, "steps": list(steps)})
    assert r.status_code == 201
    return r.json["id"]


def post(c, *lines):
    r = c.post("/api/logs", json={"logs": list(lines)})
    assert r.status_code == 201, r.json
    return r.json


def messages(r):
    assert r.status_code == 200, r.json
    return [ln["message"] for ln in (r.json["logs"] if "logs" in r.json else r.json["results"])]


TRICKY = ["100% done", "100 percent done", "a_b literal", "aXb not literal",
          'say "hi" there', "path C:\\temp\\x", "path C:/temp/x", "Ünïcode ÉCOLE line",
          "plain line"]


@pytest.mark.parametrize("q, expected", [
    ("DONE", ["100% done", "100 percent done"]),
    ("0% d", ["100% done"]),              # % is a letter, not a wildcard
    ("%", ["100% done"]),
    ("a_b", ["a_b literal"]),             # _ too
    ("_", ["a_b literal"]),
    ('"hi"', ['say "hi" there']),
    ("C:\\temp", ["path C:\\temp\\x"]),   # a backslash is itself
    ("\\", ["path C:\\temp\\x"]),
    ("école", ["Ünïcode ÉCOLE line"]),    # case folds beyond ASCII
    ("NE", ["100% done", "100 percent done", "Ünïcode ÉCOLE line", "plain line"]),  # a scan
    ("i", ["say \"hi\" there", "a_b literal", "aXb not literal", "Ünïcode ÉCOLE line",
           "plain line"]),
    ("nowhere at all", []),
])
def test_q_is_literal_text_in_any_case(c, q, expected):
    job = new_job(c)
    post(c, *[{"level": "info", "message": m, "job_id": job} for m in TRICKY])
    r = c.get("/api/logs", query_string={"scope": "job", "job_id": job, "q": q})
    assert sorted(messages(r)) == sorted(expected)
    assert r.json["meta"]["total_count"] == len(expected)
    assert "total_count_capped" not in r.json["meta"]
    # the live grep decides the same way
    f = LineFilter(job_ids=(job,), q=q)
    assert sorted(m for m in TRICKY if f.matches(
        {"level": "info", "message": m, "job_id": job, "step_name": None})) == sorted(expected)
    r = c.get("/api/search", query_string={"q": q})
    assert sorted(messages(r)) == sorted(expected)


def test_q_combines_with_level_step_job_and_pages(c):
    a, b = new_job(c, "alpha"), new_job(c, "beta")
    post(c, {"level": "debug", "message": "needle debug", "job_id": a, "step": "build"},
         {"level": "info", "message": "needle info", "job_id": a, "step": "build"},
         {"level": "error", "message": "needle error", "job_id": a, "step": "test"},
         {"level": "error", "message": "hay error", "job_id": a, "step": "test"},
         {"level": "warn", "message": "needle in b", "job_id": b},
         {"level": "info", "message": "needle in service"})

    def get(**kw):
        return messages(c.get("/api/logs", query_string={"q": "needle", **kw}))
    assert get(scope="job", job_id=a) == ["needle info", "needle error"]
    assert get(scope="job", job_id=a, level="debug") == ["needle debug", "needle info",
                                                         "needle error"]
    assert get(scope="job", job_id=a, level="error") == ["needle error"]
    assert get(scope="job", job_id=a, step="build", level="debug") == ["needle debug",
                                                                       "needle info"]
    assert get(scope="job", job_id=[a, b]) == ["needle info", "needle error", "needle in b"]
    assert get(scope="service") == ["needle in service"]
    first = c.get("/api/logs", query_string={"scope": "job", "job_id": a, "q": "needle",
                                             "level": "debug", "limit": 2}).json
    assert [ln["message"] for ln in first["logs"]] == ["needle info", "needle error"]
    assert first["meta"] == {"total_count": 3, "displayed_count": 2, "has_more": True}
    assert get(scope="job", job_id=a, level="debug", before=first["logs"][0]["id"]) == [
        "needle debug"]
    assert get(scope="job", job_id=a, level="debug", after=first["logs"][0]["id"]) == [
        "needle error"]

    r = c.get("/api/search?q=NEEDLE")
    assert messages(r) == ["needle in service", "needle in b", "needle error", "needle info",
                           "needle debug"]
    assert r.json["jobs"] == {a: {"name": "alpha", "status": "pending"},
                              b: {"name": "beta", "status": "pending"}}
    assert r.json["next_before"] is None
    assert r.json["results"][0]["job_id"] is None
    assert messages(c.get("/api/search?q=needle&level=warn")) == ["needle in b", "needle error"]
    assert messages(c.get(f"/api/search?q=needle&job_id={b}&job_id={a}&level=info")) == [
        "needle in b", "needle error", "needle info"]
    assert c.get("/api/search?q=needle&job_id=nosuchjob").status_code == 404


def test_search_pages_back_without_repeats_or_gaps(c):
    jobs = [new_job(c, f"j{i}") for i in range(3)]
    lines = [{"level": "info", "message": f"line {i} {'common' if i % 3 == 0 else 'rare'}",
              "job_id": jobs[i % 3] if i % 4 else None} for i in range(120)]
    post(c, *lines)
    expected = [ln["message"] for ln in reversed(lines) if "common" in ln["message"]]
    for q in ("common", "co"):  # the index, and a scan
        got, before, pages = [], None, 0
        while True:
            qs = {"q": q, "limit": 7}
            if before is not None:
                qs["before"] = before
            r = c.get("/api/search", query_string=qs)
            got += messages(r)
            pages += 1
            before = r.json["next_before"]
            if before is None:
                break
            assert before == r.json["results"][-1]["id"]
        assert got == expected and pages == 6  # 40 results: 5 full pages, then 5
    r = c.get("/api/search?q=line&limit=500")
    assert len(r.json["results"]) == 120 and r.json["next_before"] is None


@pytest.mark.parametrize("query, error", [
    ("q=", "q must be"), ("", "q must be"), ("q=" + "x" * 201, "q must be"),
    ("q=a%00b", "NUL"), ("q=x&limit=0", "limit"), ("q=x&limit=501", "limit"),
    ("q=x&limit=ten", "limit"), ("q=x&before=-1", "before"), ("q=x&before=1.5", "before"),
    ("q=x&level=loud", "level"),
])
def test_search_refuses_bad_input(c, query, error):
    r = c.get("/api/search?" + query)
    assert r.status_code == 400 and error in r.json["error"]


@pytest.mark.parametrize("query, error", [("q=", "q must be"), ("q=" + "y" * 201, "q must be"),
                                          ("q=a%00b", "NUL")])
def test_logs_refuse_bad_q(c, query, error):
    r = c.get("/api/logs?scope=service&" + query)
    assert r.status_code == 400 and error in r.json["error"]


def test_q_of_200_characters_and_count_cap(c):
    job = new_job(c)
    long_q = "z" * 200
    post(c, {"level": "info", "message": "<" + long_q + ">", "job_id": job})
    assert len(messages(c.get("/api/logs", query_string={"scope": "job", "job_id": job,
                                                         "q": long_q}))) == 1
    # 10,001 matching lines: the count stops at 10,000 and says so
    post(c, *[{"level": "info", "message": f"many {i}", "job_id": job} for i in range(5000)])
    post(c, *[{"level": "info", "message": f"many {i}", "job_id": job} for i in range(5000, 10001)])
    r = c.get("/api/logs", query_string={"scope": "job", "job_id": job, "q": "many", "limit": 5})
    assert r.json["meta"]["total_count"] == 10000 and r.json["meta"]["total_count_capped"]
    assert messages(r) == [f"many {i}" for i in range(9996, 10001)]
    r = c.get("/api/logs", query_string={"scope": "job", "job_id": job, "q": "many 99"})
    assert r.json["meta"]["total_count"] == 111 and "total_count_capped" not in r.json["meta"]


def test_deleted_lines_leave_the_index(c):
    job = new_job(c)
    post(c, {"level": "info", "message": "soon gone", "job_id": job})
    assert messages(c.get("/api/search?q=soon")) == ["soon gone"]
    assert c.delete(f"/api/jobs/{job}").status_code in (200, 204)
    assert messages(c.get("/api/search?q=soon")) == []
    post(c, {"level": "info", "message": "soon back"})
    assert messages(c.get("/api/search?q=soon")) == ["soon back"]


# -- the stream: a live grep, through a real server -------------------------------------

@pytest.fixture
def api(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.server = server
        yield client


def test_stream_with_q_sends_only_matches_in_backfill_and_live(api):
    job = api.post("/api/jobs", json={"name": "g", "steps": ["s"]}).json()["id"]
    api.post("/api/logs", json={"logs": [
        {"level": "info", "message": f"{'Match' if i % 3 == 0 else 'other'} {i}", "job_id": job}
        for i in range(30)]})
    s = SSEClient(f"{api.server.url}/api/logs/stream?scope=job&job_id={job}&q=match&limit=4")
    try:
        first = s.events(until=lambda e: e.event == "logs")[-1].json()
        assert [ln["message"] for ln in first["logs"]] == [f"Match {i}" for i in (18, 21, 24, 27)]
        assert first["meta"]["total_count"] == 10 and first["meta"]["has_more"]
        api.post("/api/logs", json={"logs": [
            {"level": "info", "message": m, "job_id": job}
            for m in ("no", "live MATCH one", "nope", "live match two")]})
        got = []
        while len(got) < 2:
            ev = s.events(until=lambda e: e.event == "logs", timeout=5)[-1]
            got += [ln["message"] for ln in ev.json()["logs"]]
        assert got == ["live MATCH one", "live match two"]
        last_id = ev.id
    finally:
        s.close()
    # resume: only matches after the last id
    api.post("/api/logs", json={"logs": [{"level": "info", "message": m, "job_id": job}
                                         for m in ("skip", "match three")]})
    s = SSEClient(f"{api.server.url}/api/logs/stream?scope=job&job_id={job}&q=match",
                  headers={"Last-Event-ID": last_id})
    try:
        ev = s.events(until=lambda e: e.event == "logs")[-1]
        assert [ln["message"] for ln in ev.json()["logs"]] == ["match three"]
    finally:
        s.close()
    r = api.get(f"/api/logs/stream?scope=job&job_id={job}&q=")
    assert r.status_code == 400 and "q must be" in r.json()["error"]


def test_the_index_behind_the_writer(any_app):
    """Lines the index has not reached are found by the scan after the mark; the idle
    writer then indexes every whole block of 64 ids (searchindex.BLOCK), and the index alone
    finds them. Deleted lines are never found; the documents of lines none of which is
    left go with the pruner's clear_generations (SQLite: a whole generation once none of
    its lines is left; PostgreSQL: every block before the oldest line)."""
    from datetime import datetime

    from quaero.searchindex import BLOCK, clear_generations, generations, index_behind
    from quaero.storage import write_lines
    app = any_app
    c = app.test_client()
    engine = app.extensions["quaero"].engine
    sqlite = engine.dialect.name == "sqlite"
    job = new_job(c)

    def write(messages):
        with engine.begin() as conn:  # written but not indexed: no writer to index behind
            return write_lines(conn, [{"job_id": job, "step_name": None, "level": 20,
                                       "message": m, "timestamp": datetime(2026, 1, 1)}
                                      for m in messages])

    def mark():
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT value FROM line_counters WHERE key = '__search__'").scalar()

    def indexed(text):
        """The blocks whose document holds ``text`` (lowercase, three letters)."""
        with engine.connect() as conn:
            if not sqlite:
                return list(conn.exec_driver_sql(
                    "SELECT block FROM log_text_blocks WHERE doc LIKE %s ORDER BY block",
                    (f"%{text}%",)).scalars())
            return [b for g in generations(conn) for b in conn.exec_driver_sql(
                f"SELECT rowid FROM log_fts_{g} WHERE log_fts_{g} MATCH ? ORDER BY rowid",
                (f'"{text}"',)).scalars()]
    rows = write([f"Behind {i}" for i in range(3)])
    assert mark() < rows[0]["id"] and indexed("beh") == []
    assert messages(c.get("/api/search?q=behind")) == ["Behind 2", "Behind 1", "Behind 0"]
    with engine.begin() as conn:  # the block is not whole yet: nothing is indexed
        assert index_behind(conn) == mark() < rows[0]["id"]
    rows += write([f"filler {i}" for i in range(BLOCK)])
    with engine.begin() as conn:
        upto = index_behind(conn)
    assert upto == (rows[-1]["id"] + 1) // BLOCK * BLOCK - 1 and upto >= rows[2]["id"]
    assert indexed("beh") == [rows[0]["id"] // BLOCK]
    assert messages(c.get("/api/search?q=behind")) == ["Behind 2", "Behind 1", "Behind 0"]
    # the write path's lines: indexed by the writer once it is idle, a whole block at a time
    last = post(c, *[{"level": "info", "message": f"fresh {i}", "job_id": job}
                     for i in range(2 * BLOCK)])["last_id"]
    import time
    deadline = time.monotonic() + 2
    while mark() < last // BLOCK * BLOCK - 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mark() == (last + 1) // BLOCK * BLOCK - 1 and indexed("fre")
    assert len(messages(c.get("/api/search?q=FRESH&limit=500"))) == 2 * BLOCK
    # deleted lines are never found; their documents go once none of their lines is left
    post(c, {"level": "info", "message": "a service line"})
    assert c.delete(f"/api/jobs/{job}").status_code in (200, 204)
    assert messages(c.get("/api/search?q=behind")) == []
    assert indexed("beh")   # (the block's trigrams stay until then)

    def deletion_logged():  # the service log's line saying so (written by the writer)
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT count(*) FROM log_entries WHERE job_seq IS NULL "
                                        "AND message LIKE '%%deleted%%'").scalar()
    eventually(deletion_logged, what="the service line of the deletion")
    app.extensions["quaero"].pruner.stop()   # (its passes are the test's own below)
    with engine.begin() as conn:
        if sqlite:
            assert clear_generations(conn) == []   # the service lines are in it still
        else:  # every block before the oldest line's goes, the others stay
            before = indexed("")
            clear_generations(conn)
            oldest = conn.exec_driver_sql("SELECT min(id) FROM log_entries").scalar()
    if not sqlite:
        assert indexed("") == [b for b in before if b >= oldest // BLOCK]
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM log_entries")
    app.extensions["quaero"].pruner.run_once()   # the pruner's pass empties it
    with engine.begin() as conn:
        assert clear_generations(conn) == []   # once
    assert indexed("beh") == [] and indexed("fre") == []
    assert messages(c.get("/api/search?q=behind")) == []


# -- case folding beyond ASCII: one rule, str.lower of both sides, on both databases ---------

FOLDING = ["Élan ÉCOLE", "ÄRGER mit Äpfeln", "ΟΔΟΣ closed", "σοφία", "ΣΙΣΥΦΟΣ",
           "İSTANBUL office", "istanbul depot", "KABİNE", "Straße gesperrt", "STRASSE frei",
           "GROẞE Datei", "300 \u212aELVIN"]


FOLDING_CASES = [
    ("école", ["Élan ÉCOLE"]),
    ("ÉLAN", ["Élan ÉCOLE"]),
    ("äpfeln", ["ÄRGER mit Äpfeln"]),
    ("Ärger", ["ÄRGER mit Äpfeln"]),
    ("οδος", ["ΟΔΟΣ closed"]),                  # a final Σ lowers to ς ...
    ("ΟΔΟΣ", ["ΟΔΟΣ closed"]),
    ("οδοσ", []),                                # ... not σ
    ("σοφ", ["σοφία"]),
    ("ΣΟΦΊΑ", ["σοφία"]),
    ("σισυφος", ["ΣΙΣΥΦΟΣ"]),
    ("σ", ["σοφία", "ΣΙΣΥΦΟΣ"]),
    ("ς", ["ΟΔΟΣ closed", "ΣΙΣΥΦΟΣ"]),
    ("İSTANBUL", ["İSTANBUL office"]),           # İ lowers to i + U+0307 ...
    ("istanbul", ["istanbul depot"]),           # ... so "istanbul" is not in it
    ("STANBUL", ["İSTANBUL office", "istanbul depot"]),
    ("kabi", ["KABİNE"]),                        # "i" ends q: the i of İ
    ("kabine", []),
    ("straße", ["Straße gesperrt"]),
    ("STRASSE", ["STRASSE frei"]),               # no folding beyond lower: ß is not ss
    ("ß", ["Straße gesperrt", "GROẞE Datei"]),
    ("GROẞE", ["GROẞE Datei"]),                  # ẞ lowers to ß
    ("große", ["GROẞE Datei"]),
    ("kelvin", ["300 \u212aELVIN"]),           # the Kelvin sign lowers to an ASCII k
    ("\u212a", ["300 \u212aELVIN", "KABİNE"]),  # ... and lowers so itself
]


@pytest.mark.parametrize("q, expected", FOLDING_CASES)
def test_q_folds_case_as_str_lower_on_both_databases(c, any_app, q, expected):
    """The rule: a line matches when ``q.lower()`` is in ``message.lower()`` (Python's
    str.lower), on SQLite (its trigram index included) and PostgreSQL alike."""
    assert sorted(m for m in FOLDING if q.lower() in m.lower()) == sorted(expected)
    job = new_job(c)
    last = post(c, *[{"level": "info", "message": m, "job_id": job} for m in FOLDING])["last_id"]
    wait_indexed(any_app, last)
    r = c.get("/api/logs", query_string={"scope": "job", "job_id": job, "q": q})
    assert sorted(messages(r)) == sorted(expected)
    assert r.json["meta"]["total_count"] == len(expected)
    assert sorted(messages(c.get("/api/search", query_string={"q": q}))) == sorted(expected)
    f = LineFilter(job_ids=(job,), q=q)
    assert sorted(m for m in FOLDING if f.matches(
        {"level": "info", "message": m, "job_id": job, "step_name": None})) == sorted(expected)


@pytest.mark.parametrize("documents", ["lowered", "as sent"])
def test_q_folds_case_in_a_table_an_older_quaero_made(app, documents):
    """SQLite: a generation table made by an older Quaero folds case by the tokenizer's
    own tables. After the upgrade it gets lowered documents ("lowered"); before, it got
    the messages as sent ("as sent", rewritten here as the older indexer wrote them).
    Either way every folding case finds what the rule says."""
    from quaero.searchindex import BLOCK
    engine = app.extensions["quaero"].engine
    with engine.begin() as conn:  # (generation 0, before anything is indexed)
        conn.exec_driver_sql("CREATE VIRTUAL TABLE log_fts_0 USING fts5(message, content='', "
                             "tokenize='trigram', detail=none, columnsize=0)")
    c = app.test_client()
    job = new_job(c)
    last = post(c, *[{"level": "info", "message": m, "job_id": job} for m in FOLDING])["last_id"]
    wait_indexed(app, last)
    with engine.begin() as conn:
        ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'log_fts_0'").scalar()
        assert "case_sensitive" not in ddl
        if documents == "as sent":
            blocks = {}
            for line_id, message in conn.exec_driver_sql(
                    "SELECT id, message FROM log_entries ORDER BY id"):
                blocks.setdefault(line_id // BLOCK, []).append(message)
            conn.exec_driver_sql("INSERT INTO log_fts_0(log_fts_0) VALUES ('delete-all')")
            for block, lines in blocks.items():
                conn.exec_driver_sql("INSERT INTO log_fts_0(rowid, message) VALUES (?, ?)",
                                     (block, "\n".join(lines)))
    for q, expected in FOLDING_CASES:
        r = c.get("/api/logs", query_string={"scope": "job", "job_id": job, "q": q})
        assert sorted(messages(r)) == sorted(expected), q
        assert sorted(messages(c.get("/api/search", query_string={"q": q}))) == sorted(expected), q


def test_the_index_holds_documents_as_searches_fold_them(app):
    """A table this Quaero makes holds each block's lines lowered by str.lower, and
    folds nothing more: "İ" is found as "i̇" and its trigrams, an upper-case trigram not."""
    engine = app.extensions["quaero"].engine
    c = app.test_client()
    job = new_job(c)
    last = post(c, {"level": "info", "message": "İSTANBUL ÉCOLE", "job_id": job})["last_id"]
    wait_indexed(app, last)
    with engine.connect() as conn:
        ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'log_fts_0'").scalar()
        assert "case_sensitive 1" in ddl

        def found(gram):
            return conn.exec_driver_sql("SELECT count(*) FROM log_fts_0 WHERE log_fts_0 MATCH ?",
                                        ('"' + gram + '"',)).scalar()
        assert found("i\u0307s") == 1 and found("éco") == 1 and found("ÉCO") == 0


def wait_indexed(app, last_id, timeout=10):
    """SQLite: until the search index holds every line up to ``last_id`` (the writer
    fills it when idle, a whole block of ids at a time: service lines of "0" fill the
    block), so that a search goes through the index, not the scan after it."""
    import time

    from quaero.searchindex import BLOCK
    engine = app.extensions["quaero"].engine
    if engine.dialect.name != "sqlite":
        return
    post(app.test_client(), *[{"level": "debug", "message": "0"}] * BLOCK)
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            mark = conn.exec_driver_sql(
                "SELECT value FROM line_counters WHERE key = '__search__'").scalar()
        if mark is not None and mark >= last_id:
            return
        assert time.monotonic() < deadline, f"search index at {mark}, lines up to {last_id}"
        time.sleep(0.02)


@pytest.fixture
def c_locale_pg(pg_database):
    """A PostgreSQL database whose own locale folds only ASCII (LC_CTYPE C)."""
    from tests.helpers import pg_admin
    name = pg_database.rsplit("/", 1)[1] + "_c"
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\' '
                     "LC_COLLATE 'C' LC_CTYPE 'C'")
    yield pg_database.rsplit("/", 1)[0] + "/" + name
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_q_folds_case_the_same_whatever_the_postgresql_locale(c_locale_pg, tmp_path):
    """The database's own locale does not decide: a database created with LC_CTYPE C
    (whose lower() and ILIKE fold only ASCII) answers as every other."""
    from tests.helpers import make_app
    app = make_app(c_locale_pg, tmp_path)
    try:
        c = app.test_client()
        job = new_job(c)
        post(c, *[{"level": "info", "message": m, "job_id": job} for m in FOLDING])
        wrong = {}
        for q, expected in FOLDING_CASES:
            r = c.get("/api/logs", query_string={"scope": "job", "job_id": job, "q": q})
            if sorted(messages(r)) != sorted(expected):
                wrong[q] = messages(r)
        assert wrong == {}
    finally:
        app.extensions["quaero"].close()


# -- the index's ways to a page, against the rule ------------------------------------------

_WORDS = ["alpha", "beta", "ALPHA", "Gamma%", "a_b", "İx", "delta\\", "x"]
_QS = ["alpha", "ALP", "eta", "gamma%", "a_b", "i̇x", "a\\", "ph", "zzz", "a b"]


@pytest.mark.parametrize("cap", ["listed", "scanned"])
def test_every_way_to_a_page_gives_the_rule(any_app, monkeypatch, cap):
    """Lines written in two parts, the first indexed and the second not, read with every
    filter a page takes: the newest page, the page after and before an id, the count, the
    histogram's total.
    PostgreSQL reads a search either by the listed candidates of the blocks that may hold
    ``q`` (``textsearch.PG_IDS`` of them at most) or, past that, by testing lines newest
    first: both give the rule's lines (``q.lower() in message.lower()``)."""
    from datetime import datetime

    from hypothesis import HealthCheck, given, settings, strategies as st

    from quaero import textsearch
    from quaero.histogram import log_histogram
    from quaero.models import LEVELS
    from quaero.queries import count_matches, select_lines
    from quaero.searchindex import index_behind
    from quaero.storage import write_lines
    if cap == "scanned":
        monkeypatch.setattr(textsearch, "PG_IDS", 0)
    c = any_app.test_client()
    engine = any_app.extensions["quaero"].engine
    every = []   # every line written by this test: (id, job_id, level, message)
    line = st.tuples(st.lists(st.sampled_from(_WORDS), max_size=4).map(" ".join),
                     st.sampled_from([10, 20, 30, 40]))

    @settings(max_examples=30, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(first=st.lists(line, min_size=60, max_size=200), second=st.lists(line, max_size=80),
           q=st.sampled_from(_QS), level=st.sampled_from(["debug", "info", "warn", "error"]),
           limit=st.integers(1, 40), pivot=st.floats(0, 1))
    def check(first, second, q, level, limit, pivot):
        job = new_job(c)
        for part in (first, second):
            with engine.begin() as conn:
                rows = write_lines(conn, [{"job_id": job, "step_name": None, "level": lv,
                                           "message": m, "timestamp": datetime(2026, 1, 1)}
                                          for m, lv in part])
                every.extend((r["id"], job, lv, m) for r, (m, lv) in zip(rows, part))
            if part is first:
                with engine.begin() as conn:
                    index_behind(conn, chunk=10 ** 6)
        min_level = LEVELS[level]
        for f in (LineFilter(job_ids=(job,), q=q, min_level=min_level),
                  LineFilter(everywhere=True, q=q, min_level=min_level)):
            want = [i for i, j, lv, m in every if lv >= min_level and q.lower() in m.lower()
                    and (not f.job_ids or j == job)]
            with engine.connect() as conn:
                got, more = select_lines(conn, f, limit=limit)
                assert [ln["id"] for ln in got] == want[-limit:] and more == (len(want) > limit)
                at = every[int(pivot * (len(every) - 1))][0] if every else 0
                got, _ = select_lines(conn, f, after=at, limit=limit)
                assert [ln["id"] for ln in got] == [i for i in want if i > at][:limit]
                got, _ = select_lines(conn, f, before=at, limit=limit)
                assert [ln["id"] for ln in got] == [i for i in want if i < at][-limit:]
                assert count_matches(conn, f) == (len(want), False)
            assert log_histogram(engine, f)["total"] == len(want)
    check()


def test_the_index_keeps_up_under_load(any_app, monkeypatch):
    """Lines written faster than the writer is ever idle are indexed all the same, at
    most about MAX_UNINDEXED behind (SQLite: a chunk in the writer's turn; PostgreSQL: a
    greenlet of its own beside the writer), and every search still finds every line."""
    from quaero import ingest
    monkeypatch.setattr(ingest, "MAX_UNINDEXED", 300)
    c = any_app.test_client()
    engine = any_app.extensions["quaero"].engine
    job = new_job(c)

    def counters():
        with engine.connect() as conn:
            return dict(conn.exec_driver_sql(
                "SELECT key, value FROM line_counters WHERE key IN ('__id__', '__search__')").all())
    marks = []
    for k in range(40):  # (back to back: the writer is never quiet for INDEX_AFTER_QUIET)
        post(c, *[{"level": "info", "message": f"burst {k} line {i}", "job_id": job}
                  for i in range(100)])
        marks.append(counters())
    assert marks[-1]["__search__"] > marks[0]["__search__"]
    assert all(m["__id__"] - m["__search__"] <= 4 * 300 + 2 * 100 + 64 for m in marks[10:])
    if engine.dialect.name == "postgresql":
        assert any_app.extensions["quaero"].ingestor._indexer is not None
    r = c.get("/api/search", query_string={"q": "LINE 7", "limit": 500})
    assert sorted(messages(r)) == sorted(f"burst {k} line {i}" for k in range(40)
                                          for i in range(100) if "line 7" in f"line {i}")
