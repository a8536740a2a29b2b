"""The plans for the pages that must never collect and sort a whole job or step (PostgreSQL;
SQLite's step pages at the end).

A plan is the planner's choice from its statistics, so these tests build the shape that
once made it choose badly (many small jobs of many steps, one job with one big step),
``ANALYZE`` as autovacuum would, and read ``EXPLAIN`` of the statement ``select_lines``
runs. Answers are tested elsewhere (test_api_logs, test_model); this is the cost."""
import pytest
import sqlalchemy as sa

from quaero.migrate import init_db
from quaero.models import LEVELS
from quaero.queries import LineFilter, select_lines
from tests.helpers import reset_pg

BIG = 60_000


@pytest.fixture(scope="module")
def engine(request):
    url = request.getfixturevalue("pg_database")
    engine = sa.create_engine(url)
    init_db(engine)
    reset_pg(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO jobs (id, seq, name, status, created_at) "
            "SELECT 'job' || g, g, 'n', 'completed', now() FROM generate_series(1, 201) g")
        # jobs 1-200: 10 steps of 20 lines each, one step after another
        conn.exec_driver_sql(
            "INSERT INTO log_entries (id, job_seq, step_name, level, message, timestamp, "
            "line_number) SELECT row_number() OVER (ORDER BY j, s, i), j, 's' || s, 20, 'm', "
            "now(), i FROM generate_series(1, 200) j, generate_series(1, 10) s, "
            "generate_series(1, 20) i")
        # job 201: a big step, a small one among it, lines without a step
        conn.exec_driver_sql(
            f"INSERT INTO log_entries (id, job_seq, step_name, level, message, timestamp, "
            f"line_number) SELECT 100000 + i, 201, CASE WHEN mod(i, 4000) = 0 THEN 'small' "
            f"WHEN mod(i, 7) = 0 THEN NULL ELSE 'big' END, CASE WHEN mod(i, 50) = 0 THEN 40 ELSE 20 "
            f"END, 'm', now(), i FROM generate_series(1, {BIG}) i")
        conn.exec_driver_sql("ANALYZE")
    yield engine
    reset_pg(url)
    engine.dispose()


def plan(engine, f, **page):
    """The plan of the statement ``select_lines(f, **page)`` reads its lines with (its last:
    the ones before it read counters)."""
    with engine.connect() as conn:
        run, ran = conn.execute, []
        conn.execute = lambda statement, *a, **k: ran.append(statement) or run(statement, *a, **k)
        select_lines(conn, f, **page)
        sql = str(ran[-1].compile(conn, compile_kwargs={"literal_binds": True}))
        return _rows_part("\n".join(run(sa.text("EXPLAIN (COSTS OFF) " + sql)).scalars()))


def _rows_part(shown):
    """The plan without its reads of sealed blocks (quaero.sealing: a job's lines kept
    in blocks are sorted once unpacked, a window of them at a time; none are here): the
    rows' part must not sort."""
    lines, out, skip = shown.split("\n"), [], None
    for i, line in enumerate(lines):
        depth = len(line) - len(line.lstrip())
        if skip is not None and depth > skip:
            continue
        skip = None
        if line.strip() == "->  Sort" and i + 1 < len(lines) and '"*SELECT* 2' in lines[i + 1]:
            skip = depth
            continue
        out.append(line)
    assert len(out) < len(lines), shown   # the blocks' part is there
    return "\n".join(out)


@pytest.mark.parametrize("step, kw", [
    ("big", {}), ("big", {"after": 0}), ("big", {"before": 100000 + BIG // 2}),
    ("small", {}), ("s3", {}),
])
@pytest.mark.parametrize("jobs", [1, 3])
def test_a_steps_page_reads_its_index_in_order(engine, step, kw, jobs):
    job = "job201" if step in ("big", "small") else "job7"
    job_ids = (job, "job8", "nosuch")[:jobs]  # several: each one's page, merged
    shown = plan(engine, LineFilter(job_ids=job_ids, step=step), **kw)
    assert "ix_log_step_key" in shown and "Sort Method" not in shown, shown
    assert "Sort\n" not in shown + "\n" and "Hash" not in shown and "Bitmap" not in shown, shown


@pytest.mark.parametrize("level", ["debug", "info"])
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_jobs_page_reads_its_index_in_order(engine, level, jobs):
    shown = plan(engine, LineFilter(job_ids=("job201", "job7")[:jobs], min_level=LEVELS[level]))
    assert "ix_log_job_id" in shown and "Sort\n" not in shown + "\n", shown
    assert "Hash" not in shown and "Bitmap" not in shown, shown


# -- SQLite: a step's page reads ix_log_job_step (partial: lines with a step, 0021) -----------

@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory):
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('plans')}/plans.db")
    init_db(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 201) "
            "INSERT INTO jobs (id, seq, name, status, created_at) "
            "SELECT 'job' || i, i, 'n', 'completed', '2026-12-07' FROM g")
        conn.exec_driver_sql(
            "WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < 39999) "
            "INSERT INTO log_entries (id, job_seq, step_name, level, message, timestamp, "
            "line_number) SELECT i + 1, i / 200 + 1, 's' || (i % 200 / 20), 20, 'm', 0, i FROM g")
        conn.exec_driver_sql(
            f"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {BIG}) "
            "INSERT INTO log_entries (id, job_seq, step_name, level, message, timestamp, "
            "line_number) SELECT 100000 + i, 201, CASE WHEN i % 4000 = 0 THEN 'small' "
            "WHEN i % 7 = 0 THEN NULL ELSE 'big' END, CASE WHEN i % 50 = 0 THEN 40 ELSE 20 "
            "END, 'm', 0, i FROM g")
        conn.exec_driver_sql("ANALYZE")
    yield engine
    engine.dispose()


def sqlite_plan(engine, f, **page):
    with engine.connect() as conn:
        run, ran = conn.execute, []
        conn.execute = lambda statement, *a, **k: ran.append(statement) or run(statement, *a, **k)
        lines, _ = select_lines(conn, f, **page)
        sql = str(ran[-1].compile(conn, compile_kwargs={"literal_binds": True}))
        shown = "\n".join(row[-1] for row in run(sa.text("EXPLAIN QUERY PLAN " + sql)))
        return shown, lines


@pytest.mark.parametrize("job, step, anchor", [("job201", "big", 130000),
                                               ("job201", "small", 130000), ("job7", "s3", 1265)])
@pytest.mark.parametrize("page", [None, "after", "before"])
def test_a_steps_page_reads_its_index_in_order_on_sqlite(sqlite_engine, job, step, anchor, page):
    kw = {"limit": 5} if page is None else {page: anchor, "limit": 5}
    shown, lines = sqlite_plan(sqlite_engine, LineFilter(job_ids=(job,), step=step), **kw)
    assert "USING INDEX ix_log_job_step" in shown and "TEMP B-TREE" not in shown, shown
    assert lines and {ln["step_name"] for ln in lines} == {step}
