"""The schema comes from the Alembic migrations, and they match the models."""
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from quaero.migrate import init_db
from quaero.models import Base
from quaero.textsearch import not_search_index


@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression")
def test_migrations_build_the_models_schema(database_url):
    engine = sa.create_engine(database_url)
    init_db(engine)
    init_db(engine)  # idempotent
    with engine.connect() as conn:
        dialect = conn.dialect.name

        def include(obj, name, type_, reflected, compare_to):
            # an index the models make on the other database only (.ddl_if, LogEntry's)
            only = getattr(obj, "_ddl_if", None)
            return not_search_index(obj, name, type_, reflected, compare_to) and (
                only is None or only.dialect == dialect)
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                 "include_object": include})
        diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models changed without a migration: {diff}"
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        keys = set(conn.execute(sa.text("SELECT key FROM line_counters")).scalars())
        assert {"__id__", "service"} <= keys
    engine.dispose()


def test_runner_rows_move_from_line_counters_to_their_tables(database_url):
    """A database of before 0004 keeps its runners' heartbeats and leases."""
    from alembic import command
    from quaero.migrate import alembic_config
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003_source")  # a new database
        command.downgrade(alembic_config(conn), "0003_source")  # a shared one, at head
        conn.execute(sa.text("INSERT INTO jobs (id, name, definition, status, created_at) "
                             "VALUES ('j1', 'demo', 'demo', 'running', '2026-11-30 00:00:00')"))
        conn.execute(sa.text("INSERT INTO line_counters (key, value) VALUES "
                             "('runner:1f', 1700000000000), ('lease:j1', 31), "
                             "('lease:gone', 31), ('j1', 5)"))
    init_db(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT runner_id, beat_ms FROM runner_heartbeats")).all() == [
            (31, 1700000000000)]
        assert conn.execute(sa.text("SELECT job_id, runner_id FROM job_leases")).all() == [
            ("j1", 31)]
        keys = set(conn.execute(sa.text("SELECT key FROM line_counters")).scalars())
        assert "j1" in keys and not [k for k in keys if k.startswith(("runner:", "lease:"))]
    engine.dispose()


def test_log_volume_is_counted_from_the_lines_and_the_marks_go(database_url):
    """A database of before 0007 (rolled up in part by the histogram's first requests)
    gets every line counted into ``log_volume``: the write path only adds from then on."""
    from alembic import command
    from quaero.migrate import alembic_config
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0006_bounds")
        command.downgrade(alembic_config(conn), "0006_bounds")  # a shared one, at head
        conn.execute(sa.text("INSERT INTO jobs (id, name, definition, status, created_at) "
                             "VALUES ('j7', 'demo', 'demo', 'completed', '2026-11-30 00:00:00')"))
        conn.execute(sa.text(
            "INSERT INTO log_entries (id, job_id, step_name, level, message, timestamp, "
            "line_number) VALUES (1, 'j7', 'build', 20, 'a', '2026-11-30 00:00:00.100', 1), "
            "(2, 'j7', 'build', 20, 'b', '2026-11-30 00:00:00.900', 2), "
            "(3, 'j7', NULL, 40, 'c', '2026-11-30 00:00:01.000', 3), "
            "(4, NULL, NULL, 20, 'd', '2026-11-30 00:00:02.500', 1)"))
        conn.execute(sa.text("INSERT INTO log_volume_marks (key, last_id) VALUES ('j7', 1)"))
        conn.execute(sa.text("INSERT INTO log_volume (key, step_name, level, second, count) "
                             "VALUES ('j7', 'build', 20, 1795996800, 1)"))
    init_db(engine)
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text(
            "SELECT key, step_name, level, second, count FROM log_volume")).all()) == [
            ("j7", "", 40, 1795996801, 1), ("j7", "build", 20, 1795996800, 2),
            ("service", "", 20, 1795996802, 1)]
        assert "log_volume_marks" not in sa.inspect(conn).get_table_names()
    engine.dispose()


def test_the_id_allocator_is_never_behind_the_stored_lines(database_url, tmp_path):
    """A database whose id counter is behind its lines (restored or copied in parts) made
    every write collide with a stored id (500 for ever); the start sets it right."""
    import sqlalchemy as sa

    from tests.helpers import make_app
    app = make_app(database_url, tmp_path)
    c = app.test_client()
    assert c.post("/api/logs", json={"logs": [{"level": "info", "message": m}
                                              for m in "abc"]}).status_code == 201
    engine = app.extensions["quaero"].engine
    app.extensions["quaero"].close()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE line_counters SET value = 0 WHERE key = '__id__'"))
    again = make_app(database_url, tmp_path)
    try:
        r = again.test_client().post("/api/logs", json={"logs": [{"level": "info", "message": "d"}]})
        # (after the 3 stored: another line of the service log may have come between)
        assert r.status_code == 201 and r.json["first_id"] >= 4
    finally:
        again.extensions["quaero"].close()


def test_lines_refer_to_jobs_by_number_and_sqlite_timestamps_become_milliseconds(
        database_url, tmp_path):
    """0011: a database's lines keep their ids, jobs, steps and times while their job
    becomes a number (and SQLite's timestamps milliseconds, with or without a fraction);
    0012: SQLite's search index is made again behind the writer, lines are found
    meanwhile; a downgrade gives the old layout back."""
    from alembic import command
    from quaero.migrate import alembic_config
    from tests.helpers import make_app
    sqlite = database_url.startswith("sqlite")
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0010_level_partial")  # a new database
        command.downgrade(alembic_config(conn), "0010_level_partial")  # a shared one
        conn.execute(sa.text("INSERT INTO jobs (id, name, status, created_at) VALUES "
                             "('j11', 'demo', 'completed', '2026-11-30 00:00:00'), "
                             "('j10', 'older', 'completed', '2026-11-29 00:00:00')"))
        conn.execute(sa.text("INSERT INTO line_counters (key, value, first_id, last_id) "
                             "VALUES ('j11', 2, 1, 2), ('j10', 0, NULL, NULL)"))
        conn.execute(sa.text(
            "INSERT INTO log_entries (id, job_id, step_name, level, message, timestamp, "
            "line_number) VALUES (1, 'j11', 'build', 20, 'needle one', "
            "'2026-11-30 10:30:45.123999', 1), (2, 'j11', NULL, 40, 'needle two', "
            "'2199-12-31 23:59:59', 2), (3, NULL, NULL, 20, 'needle three', "
            "'2026-11-30 10:30:46', 1)"))
        if sqlite:
            conn.execute(sa.text("INSERT INTO log_fts(log_fts) VALUES ('rebuild')"))
        conn.execute(sa.text("UPDATE line_counters SET value = 3 WHERE key IN ('__id__', '__search__')"))
    engine.dispose()
    app = make_app(database_url, tmp_path)
    try:
        client = app.test_client()
        lines = client.get("/api/logs?scope=job&job_id=j11").get_json()["logs"]
        assert [(x["id"], x["job_id"], x["step_name"], x["timestamp"]) for x in lines] == [
            (1, "j11", "build", "2026-11-30T10:30:45.123Z"),
            (2, "j11", None, "2199-12-31T23:59:59.000Z")]
        service = client.get("/api/logs?scope=service&q=needle").get_json()["logs"]
        assert [(x["id"], x["job_id"]) for x in service] == [(3, None)]
        found = client.get("/api/search?q=needle").get_json()["results"]
        assert sorted((x["id"], x["job_id"]) for x in found) == [(1, "j11"), (2, "j11"), (3, None)]
        with app.extensions["quaero"].engine.connect() as conn:  # numbered in creation order
            assert conn.execute(sa.text("SELECT id, seq FROM jobs ORDER BY seq")).all() == [
                ("j10", 1), ("j11", 2)]
        job = client.post("/api/jobs", json={"name": "new"}).get_json()["id"]
        assert client.post("/api/logs", json={"logs": [{"level": "info", "message": "after", "job_id": job}]}) \
            .status_code == 201
        assert client.get(f"/api/logs?scope=job&job_id={job}").get_json()["logs"][0]["message"] \
            == "after"
        assert client.delete(f"/api/jobs/{job}").status_code == 204
    finally:
        app.extensions["quaero"].close()
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        if sqlite:
            assert set(conn.execute(sa.text("SELECT typeof(timestamp) FROM log_entries"))
                       .scalars()) == {"integer"}
        command.downgrade(alembic_config(conn), "0010_level_partial")
        rows = conn.execute(sa.text("SELECT id, job_id, timestamp FROM log_entries "
                                    "WHERE id <= 3 ORDER BY id")).all()
        assert [(i, j) for i, j, _ in rows] == [(1, "j11"), (2, "j11"), (3, None)]
        if sqlite:
            assert [t for _, _, t in rows] == ["2026-11-30 10:30:45.123000",
                                               "2199-12-31 23:59:59.000000",
                                               "2026-11-30 10:30:46.000000"]
            conn.execute(sa.text("DELETE FROM log_entries WHERE id = 1"))  # the trigger is back
            assert conn.execute(sa.text(
                "SELECT count(*) FROM log_fts WHERE log_fts MATCH 'one'")).scalar() == 0
        command.upgrade(alembic_config(conn), "head")
    engine.dispose()


def test_the_heads_are_read_from_the_files_as_alembic_reads_them():
    from alembic.script import ScriptDirectory
    from quaero.migrate import alembic_config, head_revisions
    assert head_revisions() == frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def test_a_database_at_head_is_left_alone_and_one_behind_is_brought_up(database_url,
                                                                       monkeypatch):
    """A worker's start: no Alembic when ``alembic_version`` is the head; else the upgrade
    (with PostgreSQL's advisory lock) as before."""
    from alembic import command
    from quaero.migrate import alembic_config, is_current, upgrade
    engine = sa.create_engine(database_url)
    init_db(engine)
    assert is_current(engine)
    calls = []
    real = command.upgrade
    monkeypatch.setattr(command, "upgrade", lambda *a, **kw: (calls.append(a[1]), real(*a, **kw)))
    upgrade(engine)
    assert calls == []
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0016_access_keys")  # a shared one, at head
    assert not is_current(engine)
    upgrade(engine)
    assert calls == ["head"] and is_current(engine)
    engine.dispose()


def test_a_downgrade_past_0021_leaves_no_case_sensitive_search_table(tmp_path):
    """SQLite: an older release writes documents as sent; the tables this one made hold
    them lowered and fold nothing, so the downgrade drops them and the older release
    indexes their lines again (its mark goes back before their first id)."""
    from alembic import command
    from quaero.migrate import alembic_config
    from quaero.searchindex import GENERATION, index_behind
    from quaero.storage import write_lines
    from datetime import datetime
    engine = sa.create_engine(f"sqlite:///{tmp_path}/d.db")
    init_db(engine)
    with engine.begin() as conn:  # an older table (generation 0), then this release's (1)
        conn.exec_driver_sql("CREATE VIRTUAL TABLE log_fts_0 USING fts5(message, content='', "
                             "tokenize='trigram', detail=none, columnsize=0)")
        conn.exec_driver_sql("UPDATE line_counters SET value = ? WHERE key = '__id__'",
                             (GENERATION - 200,))
        conn.exec_driver_sql("UPDATE line_counters SET value = ? WHERE key = '__search__'",
                             (GENERATION - 257,))
        write_lines(conn, [{"job_id": None, "step_name": None, "level": 20,
                            "message": f"Line {i}", "timestamp": datetime(2026, 12, 7)}
                           for i in range(400)])
    with engine.begin() as conn:
        assert index_behind(conn) == GENERATION + 191
        tables = dict(conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE name GLOB 'log_fts_[0-9]'").all())
    assert "case_sensitive" not in tables["log_fts_0"] and "case_sensitive 1" in tables["log_fts_1"]
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0020_pg_sealed_blocks")
    with engine.connect() as conn:
        names = set(conn.exec_driver_sql("SELECT name FROM sqlite_master").scalars())
        mark = conn.exec_driver_sql(
            "SELECT value FROM line_counters WHERE key = '__search__'").scalar()
    assert "log_fts_0" in names and "log_fts_1" not in names and "log_attr_1" not in names
    assert mark == GENERATION - 1
    engine.dispose()
