"""The reads: every reader (polling API, stream backfill, ``Last-Event-ID`` resume,
search, the text download) goes through :func:`select_lines` or :func:`tail_lines` with a
:class:`LineFilter`. Counts come from ``log_counts``, kept up to date by the write path, so
that ``total_count`` and ``log_counts`` never scan a job's lines; text search uses the
databases' own trigram indexes over blocks of lines (``textsearch``)."""
import dataclasses
from dataclasses import dataclass

import sqlalchemy as sa

from .attributes import line_matches
from .models import (ID_KEY, LEVEL_NAMES, LEVELS, RARE_LEVEL, SERVICE_KEY, counters_t,
                     counts_t, jobs_t, line_dict, log_t, of_jobs, HexBytes, STEP_KEY)
from .sealing import Windows, lines_of
from .textsearch import attr_condition, search_index, text_condition


@dataclass(frozen=True)
class LineFilter:
    """Which lines a reader wants. Hashable: streams with equal filters share work."""
    job_ids: tuple = ()          # empty: the service log (or every line, with everywhere)
    step: str | None = None
    min_level: int = LEVELS["info"]
    q: str | None = None         # literal text the message contains, any case
    everywhere: bool = False     # search: every job and the service log
    folded: str | None = dataclasses.field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self):
        if self.q is not None:  # folded once: matches() runs for every live line
            object.__setattr__(self, "folded", self.q.lower())
    source: str | None = None    # only lines this program sent
    attrs: tuple = ()            # ((key, text), ...): attribute filters, all must match
    trace_id: str | None = None  # only lines of this trace

    @property
    def scope(self):
        return "job" if self.job_ids else "all" if self.everywhere else "service"

    @property
    def counted(self):
        """Whether the kept counts (log_counts, log_volume) answer this filter: not for
        text, a source, attributes or a trace, which only the lines know."""
        return (self.q is None and self.source is None and not self.attrs
                and self.trace_id is None)

    def matches(self, line):
        if LEVELS[line["level"]] < self.min_level:
            return False
        if self.folded is not None and self.folded not in line["message"].lower():
            return False
        if self.source is not None and line.get("source") != self.source:
            return False
        if self.trace_id is not None and line.get("trace_id") != self.trace_id:
            return False
        if self.attrs and not line_matches(line.get("attributes"), self.attrs):
            return False
        if self.job_ids:
            return line["job_id"] in self.job_ids and (
                self.step is None or line["step_name"] == self.step)
        return self.everywhere or line["job_id"] is None


_OF_STEP = sa.text(
    STEP_KEY.format(seq="log_entries.job_seq", step="log_entries.step_name") + " = "
    + STEP_KEY.format(seq="(SELECT seq FROM jobs WHERE id = :job)", step="CAST(:step AS text)"))


def of_step(job_id, step):
    """PostgreSQL: "a line of job ``job_id`` whose step's key is ``step``'s", which reads
    ``ix_log_step_key``. It needs no test of the job besides: the key holds the job's
    ``seq`` whole (below 2**43, a check on ``jobs.seq``), and with one a planner
    multiplies the two conditions' estimates, guesses a handful of lines and sorts every
    line of the step instead of reading the index backwards to the page's end. The
    caller tests the step's name. (Several jobs' pages are read job by job; their counts
    take the job index.)"""
    return _OF_STEP.bindparams(sa.bindparam("job", job_id, unique=True),
                               sa.bindparam("step", step, unique=True)).self_group()


def _where(f, conn, index=False, t=log_t):
    """The filter as conditions. "info and above" (the default) matches nearly every line,
    so its level test is kept out of the index choice (``level + 0``): the job's or step's
    index is then read backwards from the newest line, instead of every line at a level
    being collected and sorted. Rarer levels (warn, error) use the (job, level, id) index,
    which holds only them: its condition is stated as written (a literal), since neither
    planner proves ``level >= :bound`` implies it. ``index``: ``search_index`` when the
    caller has read it (``tail_lines``: once for every job). ``t``: the lines read
    (``lines_of``)."""
    dialect = conn.dialect.name
    if index is False:
        index = search_index(conn, f)
    conds = []
    if f.min_level > LEVELS["info"]:  # warn or error: RARE_LEVEL and above
        conds.append(t.c.level >= f.min_level)
        conds.append(t.c.level >= sa.literal_column(str(RARE_LEVEL)))
    elif f.min_level > LEVELS["debug"]:
        conds.append((t.c.level + 0) >= f.min_level)
    if (f.step is not None and len(f.job_ids) == 1 and dialect == "postgresql"
            and f.min_level <= LEVELS["info"]):  # (warn, error: the level index, by job)
        conds.append(of_step(f.job_ids[0], f.step))  # the job too, as its index has it
    elif f.job_ids or not f.everywhere:
        conds.append(of_jobs(f.job_ids, t))
    if f.step is not None:
        conds.append(t.c.step_name == f.step)
    if f.q is not None:
        conds.append(text_condition(f.q, dialect, index, t))
    if f.source is not None:
        conds.append(t.c.source == f.source)
    if f.trace_id is not None:
        conds.append(t.c.trace_id == sa.type_coerce(f.trace_id, HexBytes()))
    if f.attrs:
        conds.extend(attr_condition(k, text, dialect, index) for k, text in f.attrs)
    return conds


# A line as line_dict takes it; its job's id from the job its ``job_seq`` refers to
_COLS = ("step_name", "level", "message", "timestamp", "line_number", "source", "attributes",
         "trace_id", "span_id")


def _select_lines(f=None, t=log_t):
    """The lines' columns for ``f``, read from ``t`` (``lines_of``). Lines of one job are
    that job's, and the service log's no job's: their job id needs no join. Joined to
    every job, a planner that cannot tell how many lines match (a step's key from a job's
    seq it has not read yet) hash-joined every job to every line of a 171,000-line step
    and sorted them (75 ms; 0.7 ms read alone). Several jobs, or every line: the job's
    id by the join."""
    if f is not None and len(f.job_ids) == 1:
        job, frm = sa.literal(f.job_ids[0], jobs_t.c.id.type), t
    elif f is not None and not f.job_ids and not f.everywhere:
        job, frm = sa.null(), t
    else:
        job, frm = jobs_t.c.id, t.outerjoin(jobs_t, jobs_t.c.seq == t.c.job_seq)
    return sa.select(t.c.id, job.label("job_id"), *(t.c[name] for name in _COLS)).select_from(frm)


_BOUNDS = sa.select(counters_t.c.key, counters_t.c.first_id, counters_t.c.last_id).where(
    counters_t.c.key.in_(sa.bindparam("keys", expanding=True)))


def job_bounds(conn, f):
    """``{job_id: (first line id, last line id)}`` for a tail read of ``f`` that needs
    them, else None. PostgreSQL may read an older job's tail by the primary key backwards
    from the table's newest line, through every newer job's lines (160-280 ms for 5,000
    lines behind a million); ``id BETWEEN first AND last`` starts any such scan at the
    job's own last line. Only for the filters that read the job's (job_id, id) index
    (info and below, no step, no text): a step or a rarer level has its own index, and the
    bound made the planner leave it. The bounds come from the job's counter row (a primary
    key lookup that cannot change plan), which the write path keeps. Ids are handed out
    in commit order, so a line committed after this read has a greater id: the result is
    the job as it was here, as if the read had run a moment earlier."""
    if (conn.dialect.name != "postgresql" or not f.job_ids or f.step is not None
            or f.min_level > LEVELS["info"] or f.q is not None):
        return None
    rows = conn.execute(_BOUNDS, {"keys": list(f.job_ids)}).all()
    return {key: (first, last) for key, first, last in rows if first is not None}


def select_lines(conn, f, *, after=None, before=None, limit=100):
    """Matching lines, oldest first: the first ``limit`` after ``after``, or else the
    last ``limit`` (before ``before``). Fetches one extra row to tell whether more exist.
    Returns ``(lines, more)``. Several jobs: each job's page, in one statement (a job's
    and a step's index give one job's lines in order; asked for several jobs at once,
    PostgreSQL collected every line of them and sorted: 170 ms for a 171,000-line step)."""
    bounds = job_bounds(conn, f) if after is None else None
    index = search_index(conn, f)
    windows = Windows(conn, f, after, before, limit + 1, index)
    while True:
        if len(f.job_ids) > 1:
            parts = _each_job(conn, f, after, before, limit, bounds, index, windows).subquery()
            stmt = sa.select(parts).order_by(
                parts.c.id.asc() if after is not None else parts.c.id.desc()).limit(limit + 1)
        else:
            bound = bounds and bounds.get(f.job_ids[0]) if f.job_ids else None
            stmt = _page(conn, f, after, before, limit, bound, index, windows.of(_key(f)))
        rows = conn.execute(stmt).all()
        if windows.enough([r.id for r in rows], len(rows) > limit):
            break
    more = len(rows) > limit
    rows = rows[:limit]
    if after is None:
        rows.reverse()
    return [line_dict(*r) for r in rows], more


def _key(f):
    return f.job_ids[0] if f.job_ids else None


def _page(conn, f, after, before, limit, bound=None, index=False, window=None):
    """The statement of ``select_lines``'s page for one job, the service log or every
    line; ``bound``: the job's (first, last) line ids (``job_bounds``); ``window``: the
    ids its sealed blocks are read in (``Windows``)."""
    if index is False:
        index = search_index(conn, f)
    t = lines_of(conn, f, index, window, after, before)
    conds = _where(f, conn, index, t)
    if bound:
        conds.append(t.c.id.between(*bound))
    if after is not None:
        conds.append(t.c.id > after)
    if before is not None:
        conds.append(t.c.id < before)
    order = t.c.id.asc() if after is not None else t.c.id.desc()
    return _select_lines(f, t).where(*conds).order_by(order).limit(limit + 1)


def _each_job(conn, f, after, before, limit, bounds, index, windows):
    """Each job's page (``_page``) of ``f``'s jobs, as one UNION ALL; the search index is
    read once for all of them."""
    return sa.union_all(*(
        _page(conn, dataclasses.replace(f, job_ids=(job_id,)), after, before, limit,
              bounds and bounds.get(job_id), index, windows.of(job_id)).subquery().select()
        for job_id in f.job_ids))


_NEWEST = sa.select(counters_t.c.value).where(counters_t.c.key == ID_KEY)


def newest_id(conn):
    """The newest committed line id: the id allocator's value (ids become visible in
    commit order; a line pruned since keeps its id taken)."""
    return int(conn.execute(_NEWEST).scalar() or 0)


_ALL = LineFilter(everywhere=True, min_level=min(LEVELS.values()))


def all_lines_between(conn, after, before, limit=None):
    """Every line with ``after < id < before`` (any job, any level), oldest first."""
    windows = Windows(conn, _ALL, after, before, limit or 0, None) if limit else None
    while True:
        t = lines_of(conn, _ALL, None, windows and windows.of(None), after, before)
        q = _select_lines(None, t).where(t.c.id > after, t.c.id < before).order_by(t.c.id)
        if limit is not None:
            q = q.limit(limit)
        rows = conn.execute(q).all()
        if windows is None or windows.enough([r.id for r in rows], len(rows) >= limit):
            return [line_dict(*r) for r in rows]


def tail_lines(conn, f, limit):
    """The stream's backfill: the last ``limit`` lines of each job (or of the service
    log), oldest first, read in one statement so that all jobs share one snapshot."""
    if len(f.job_ids) <= 1:
        return select_lines(conn, f, limit=limit)
    index = search_index(conn, f)
    windows = Windows(conn, f, None, None, limit + 1, index)
    bounds = job_bounds(conn, f)
    while True:
        rows = conn.execute(_each_job(conn, f, None, None, limit, bounds, index, windows)).all()
        per_job = {}
        for r in rows:
            per_job.setdefault(r.job_id, []).append(r)
        if windows.enough([r.id for r in rows], True, {k: len(v) for k, v in per_job.items()}):
            break
    more = any(len(v) > limit for v in per_job.values())
    keep = sorted((r for v in per_job.values() for r in sorted(v, key=lambda r: -r.id)[:limit]),
                  key=lambda r: r.id)
    return [line_dict(*r) for r in keep], more


COUNT_CAP = 10000


def count_matches(conn, f):
    """``(n, capped)``: lines matching ``f`` now. Without ``q`` from the kept counts (a
    few rows, never a scan); with ``q`` or ``source`` (not in the counts) by counting
    matches, stopping at COUNT_CAP."""
    if not f.counted:
        index = search_index(conn, f)
        t = lines_of(conn, f, index, reads=frozenset())
        found = sa.select(t.c.id).where(*_where(f, conn, index, t)).limit(COUNT_CAP + 1)
        n = conn.execute(sa.select(sa.func.count()).select_from(found.subquery())).scalar()
        return min(n, COUNT_CAP), n > COUNT_CAP
    keys = list(f.job_ids) if f.job_ids else [SERVICE_KEY]
    if f.everywhere and not f.job_ids:
        q = sa.select(sa.func.coalesce(sa.func.sum(counts_t.c.count), 0)).where(
            counts_t.c.level >= f.min_level)
        return int(conn.execute(q).scalar()), False
    q = _COUNT_STEP if f.step is not None else _COUNT
    return int(conn.execute(q, {"keys": keys, "min_level": f.min_level,
                                "step": f.step}).scalar()), False


# count_matches's statements, built once (a polling GET asks one each time)
_COUNT = sa.select(sa.func.coalesce(sa.func.sum(counts_t.c.count), 0)).where(
    counts_t.c.level >= sa.bindparam("min_level"),
    counts_t.c.key.in_(sa.bindparam("keys", expanding=True)))
_COUNT_STEP = _COUNT.where(counts_t.c.step_name == sa.bindparam("step"))


def count_lines(conn, f):
    return count_matches(conn, f)[0]


def level_counts(conn, job_ids):
    """``{job_id: {"debug": n, ...}}`` for the given jobs."""
    out = {jid: dict.fromkeys(LEVELS, 0) for jid in job_ids}
    if not job_ids:
        return out
    q = (sa.select(counts_t.c.key, counts_t.c.level, sa.func.sum(counts_t.c.count))
         .where(counts_t.c.key.in_(list(job_ids)))
         .group_by(counts_t.c.key, counts_t.c.level))
    for key, level, n in conn.execute(q):
        out[key][LEVEL_NAMES[level]] = int(n)
    return out
