"""``python -m quaero grep TEXT [--job ID] [--follow] [--attr KEY=VALUE]``: the stored lines
that contain TEXT (any case, literal) and have those attributes, over HTTP only: ``GET
/api/search`` across every job and the service log, ``GET /api/logs?q=`` in one job, and
the stream with ``q`` to follow."""
import sys
import time

import click

from .common import (LEVELS, Printer, api_call, filter_options, filter_params,
                     follow_until_ctrl_c, json_option, server_options)

SEARCH_PAGE = 500        # the server's largest /api/search page
POLL_SECONDS = 2.0       # --follow without --job: how often /api/search is asked again


class CountingPrinter(Printer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.printed = 0

    def lines(self, lines):
        self.printed += len(lines)
        super().lines(lines)


@click.command(help="""Print the stored lines that contain TEXT (any case, taken literally)
and match every --attr KEY=VALUE and --trace-id given (TEXT may be left out with them).

\b
Without --job: every job and the service log (GET /api/search).
With --job: that job's log (GET /api/logs?q=).

Like grep, the lines come oldest first, so the newest match is the last line printed:
the newest --max matches (default 100), or every match with --all. --follow then keeps
printing new matching lines (with --job until the job ends). Exit status 0 when a line
matched, 1 when none did.""")
@server_options
@click.argument("text", required=False)
@click.option("--job", "job_id", help="Search only this job's log.")
@filter_options
@click.option("--level", type=click.Choice(LEVELS), default="debug", show_default=True,
              help="This level and above.")
@click.option("--max", "max_count", type=click.IntRange(1), default=100, show_default=True,
              help="Print the newest N matches.")
@click.option("--all", "every", is_flag=True, help="Print every match (overrides --max).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new matches as they arrive.")
@json_option
@click.pass_obj
def grep(settings, text, job_id, attrs, trace_id, level, max_count, every, follow, as_json):
    if not text and not attrs and not trace_id:
        raise click.UsageError("give TEXT, --attr or --trace-id")
    # what a line must match, as the API's query parameters
    match = {"q": text or None, **filter_params(attrs, trace_id)}
    printer = CountingPrinter(as_json, show_job=job_id is None)
    if job_id and follow and not every:
        # the stream's backfill is the newest matches, then it is a live grep
        params = {"scope": "job", "job_id": [job_id], "level": level, **match,
                  "limit": max_count}
        end = follow_until_ctrl_c(settings, params, printer, "stopped following")
        for j in end.get("jobs") or [end.get("job") or {}]:
            printer.note(f"job {j.get('id')} ended: {j.get('status')}")
    elif job_id:
        last_id = _grep_job(settings, match, job_id, level, None if every else max_count,
                            printer)
        if follow:
            params = {"scope": "job", "job_id": [job_id], "level": level, **match}
            follow_until_ctrl_c(settings, params, printer, "stopped following", after=last_id or 0)
    else:
        newest = _grep_all(settings, match, level, None if every else max_count, printer)
        if follow:
            _poll_all(settings, match, level, newest, printer)
    sys.exit(0 if printer.printed else 1)


def _grep_job(settings, match, job_id, level, limit, printer):
    """A job's matches, oldest first: the newest ``limit``, or all (paged forward).
    Returns the newest id printed."""
    base = {"scope": "job", "job_id": job_id, "level": level, **_present(match)}
    if limit is not None:
        body = api_call(settings, "GET", "/api/logs", params={**base, "limit": limit})
        printer.lines(body["logs"])
        return body["logs"][-1]["id"] if body["logs"] else None
    after = 0
    while True:
        body = api_call(settings, "GET", "/api/logs", params={**base, "after": after, "limit": 5000})
        printer.lines(body["logs"])
        if body["logs"]:
            after = body["logs"][-1]["id"]
        if not body["meta"].get("has_more"):
            return after


def _present(params):
    return {k: v for k, v in params.items() if v is not None}


def _search(settings, match, level, before, limit):
    params = {**_present(match), "level": level, "limit": limit}
    if before is not None:
        params["before"] = before
    return api_call(settings, "GET", "/api/search", params=params)


def _grep_all(settings, match, level, limit, printer):
    """Matches everywhere: asked newest first, printed oldest first. Returns the newest id."""
    found, before = [], None
    while limit is None or len(found) < limit:
        want = SEARCH_PAGE if limit is None else min(SEARCH_PAGE, limit - len(found))
        body = _search(settings, match, level, before, want)
        found += body["results"]
        before = body["next_before"]
        if before is None:
            break
    found.reverse()
    printer.lines(found)
    return found[-1]["id"] if found else 0


def _poll_all(settings, match, level, newest, printer):
    """New matches anywhere, by asking /api/search again (no stream spans every job)."""
    try:
        while True:
            time.sleep(POLL_SECONDS)
            fresh, before = [], None
            while True:
                body = _search(settings, match, level, before, SEARCH_PAGE)
                page = [ln for ln in body["results"] if ln["id"] > newest]
                fresh += page
                before = body["next_before"]
                if before is None or len(page) < len(body["results"]):
                    break
            if fresh:
                fresh.reverse()
                printer.lines(fresh)
                newest = fresh[-1]["id"]
    except KeyboardInterrupt:
        printer.note("stopped following")
        sys.exit(0 if printer.printed else 1)
