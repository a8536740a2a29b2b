"""``quaero`` (or ``python -m quaero``): run job definitions, follow logs live, list jobs,
send any program's output; ``serve`` runs the server.

    quaero run demo                 # on the server at --url (--local: in this process)
    quaero tail <job-id> [--level debug] [--step build] [--attr user.id=42]
    quaero tail --service
    quaero jobs [--status running]
    quaero definitions | cancel <job-id> | rerun <job-id> | grep TEXT [--job ID]
    quaero exec -- make test        |  make 2>&1 | quaero pipe
    quaero serve [--host H] [--port P] [--workers N] [--config FILE]
    quaero import ARCHIVE.ndjson.gz...   # archived jobs back into the local database
    quaero keys create --name ci --scope ingest [--jobs 'nightly-*'] | list | revoke ID
    quaero sessions list | revoke alice@example.com     # sign a person out everywhere

``--url`` (env ``QUAERO_URL``; unset: ``QUAERO_HOST``/``QUAERO_PORT``, where ``python app.py``
listens, default http://127.0.0.1:5000) and ``--token`` (env ``QUAERO_API_TOKEN``) pick the
server, before or after the command's name. Streams (httpx-sse) resume a dropped connection
with ``Last-Event-ID``: each line once. Exit status of ``run`` and ``tail <job>``: 0
completed, 1 failed, 2 cancelled, 3 deleted.

The commands that talk HTTP import neither Flask, gevent nor SQLAlchemy (``pip install .``
is enough); ``serve``, ``import`` and ``run --local`` need ``pip install "quaero[server]"``.
"""
import json
import sys

import click

from .. import __version__
from .common import (DEFAULT_URL, EXIT, RETRY_FOR, Printer, Settings, Unreachable, api_call,
                     default_url, filter_options, filter_params, follow_until_ctrl_c,
                     json_option, level_option, server_options)
from .archive import import_
from .alerts import alerts
from .grep import grep
from .keys import keys
from .sessions import sessions
from .serve import SERVER_EXTRA, serve


parse_option = click.option(
    "--parse", type=click.Choice(["json", "logfmt"]),
    help="Lines that are JSON objects (or logfmt key=value pairs) become structured lines: "
         "the msg/message field is the message, level/severity/lvl the level, trace_id and "
         "span_id the ids, the other fields attributes. Other lines stay as they are.")


# --- commands ----------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="quaero", message="%(prog)s %(version)s")
@click.option("--url", envvar="QUAERO_URL", default=default_url,
              show_default="env QUAERO_HOST/QUAERO_PORT, else " + DEFAULT_URL,
              help="Quaero server (env QUAERO_URL).")
@click.option("--token", envvar="QUAERO_API_TOKEN", default=None,
              help="API token (env QUAERO_API_TOKEN).")
@click.pass_context
def cli(ctx, url, token):
    """Quaero: run jobs, send any program's output as a job's log, follow logs live, and
    (quaero serve) run the server. --url and --token go before or after the command's name;
    -- ends the options."""
    ctx.obj = Settings(url, token)


cli.add_command(grep)
cli.add_command(serve)
cli.add_command(import_)
cli.add_command(alerts)
cli.add_command(keys)
cli.add_command(sessions)


@cli.command()
@server_options
@click.argument("job_ids", nargs=-1)
@click.option("--service", is_flag=True, help="Follow Quaero's service log.")
@level_option
@click.option("--step", help="Only this step's lines.")
@filter_options
@click.option("--limit", type=click.IntRange(0), default=100, show_default=True,
              help="Lines of backlog to show first.")
@click.option("--all", "from_start", is_flag=True, help="Show the whole log first.")
@click.option("--after", type=click.IntRange(0), help="Start after this line id.")
@json_option
@click.option("--verbose", "-v", is_flag=True, help="Say when the stream is resumed.")
@click.option("--retry-for", type=click.FloatRange(0), default=RETRY_FOR, show_default=True,
              metavar="SECONDS", help="How long to keep reconnecting to a server that went "
                                      "away before giving up (exit status 1).")
@click.pass_obj
def tail(settings, job_ids, service, level, step, attrs, trace_id, limit, from_start, after,
         as_json, verbose, retry_for):
    """Follow the log of jobs (until they end) or of the service.

    A dropped stream is resumed where it stopped. A server that cannot be reached is said
    on stderr at once; tail gives up (exit status 1) when it never answered (3 tries) or
    has not for --retry-for seconds."""
    if service == bool(job_ids):
        raise click.UsageError("give job ids, or --service")
    if service and step:
        raise click.UsageError("--step needs a job")
    params = {"scope": "service" if service else "job", "job_id": list(job_ids),
              "level": level, "step": step, "limit": limit, **filter_params(attrs, trace_id)}
    if from_start and after is None:
        after = 0
    printer = Printer(as_json, show_job=len(job_ids) > 1)
    end = follow_until_ctrl_c(settings, params, printer, "stopped following", after=after,
                               verbose=verbose, retry_for=retry_for)
    sys.exit(_finish(end, printer))


def _finish(end, printer):
    jobs = end.get("jobs") or [end.get("job") or {}]
    statuses = [j.get("status") for j in jobs]
    for j in jobs:
        printer.note(f"job {j.get('id')} ended: {j.get('status')}")
    return max((EXIT.get(s, 1) for s in statuses), default=0)


@cli.command()
@server_options
@click.argument("definition")
@level_option
@click.option("--local", is_flag=True,
              help="Run it in this process, on the local database, instead of on the server "
                   "(needs quaero[server]). Without it nothing runs here.")
@click.option("--detach", is_flag=True, help="Start the job, print its id, do not follow.")
@json_option
@click.pass_obj
def run(settings, definition, level, local, detach, as_json):
    """Start a job from a definition on the server and follow its log to the end.

    A server that cannot be reached is an error: the job runs on this machine only with
    --local."""
    printer = Printer(as_json)
    if local:
        try:
            from ..local_run import run_local
        except ImportError as exc:
            raise click.ClickException(f"run --local needs the server: {SERVER_EXTRA} "
                                       f"({exc.name} is not installed)") from None
        status = run_local(definition, level, printer, detach)
        sys.exit(130 if status is None else EXIT.get(status, 1))
    try:
        job = api_call(settings, "POST", "/api/jobs", json={"definition": definition})
    except Unreachable as exc:
        exc.message += " (nothing was run; --local runs the job in this process)"
        raise
    if detach:
        click.echo(job["id"])
        return
    printer.note(f"job {job['id']} ({job['name']}) queued on {settings.url}")
    end = _follow_job(settings, job, level, printer)
    sys.exit(_finish(end, printer))


def _follow_job(settings, job, level, printer):
    prog = click.get_current_context().find_root().info_name
    return follow_until_ctrl_c(
        settings, {"scope": "job", "job_id": [job["id"]], "level": level}, printer,
        f"stopped following; the job goes on. Cancel it with: {prog} cancel {job['id']}",
        after=0)


@cli.command("jobs")
@server_options
@click.option("--status", type=click.Choice(["pending", "running", "completed", "failed",
                                             "cancelled"]))
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@json_option
@click.pass_obj
def list_jobs(settings, status, limit, as_json):
    """List jobs, newest first."""
    data = api_call(settings, "GET", "/api/jobs", params={"status": status, "limit": limit})
    if as_json:
        _json_lines(data["jobs"])
        click.echo(f"{len(data['jobs'])} of {data['total']} jobs", err=True)
        return
    rows = [("ID", "NAME", "STATUS", "CREATED", "TIME", "LINES d/i/w/e", "STEPS")]
    for j in data["jobs"]:
        c = j["log_counts"]
        steps = " ".join(f"{s['name']}:{s['status']}" for s in j["steps"])
        rows.append((j["id"], j["name"][:30], j["status"],
                     (j["created_at"] or "")[:19].replace("T", " "), _duration(j),
                     f"{c['debug']}/{c['info']}/{c['warn']}/{c['error']}", steps))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    click.echo(f"{len(data['jobs'])} of {data['total']} jobs", err=True)


def _duration(job):
    from datetime import datetime, timezone
    if not job.get("started_at"):
        return "-"

    def parse(s):
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    end = parse(job["finished_at"]) if job.get("finished_at") else datetime.now(timezone.utc)
    secs = max((end - parse(job["started_at"])).total_seconds(), 0)
    return f"{secs:.1f}s" if secs < 120 else f"{secs / 60:.1f}m"


def _json_lines(items):
    for item in items:
        click.echo(json.dumps(item, ensure_ascii=False))


@cli.command()
@server_options
@json_option
@click.pass_obj
def definitions(settings, as_json):
    """List the job definitions the server has."""
    data = api_call(settings, "GET", "/api/job-definitions")
    if as_json:
        _json_lines(data["definitions"])
        return
    for d in data["definitions"]:
        if d.get("error"):
            click.echo(click.style(f"{d.get('name') or d.get('file')}: BROKEN, cannot be started: "
                                   f"{d['error']}", fg="red"))
            continue
        click.echo(f"{d['name']}: {d.get('description') or ''}")
        if d.get("schedule"):
            click.echo(f"  schedule {d['schedule']} ({d.get('timezone', 'UTC')}), next run "
                       f"{d.get('next_run_at')}")
        for s in d.get("steps") or ():
            command = (s.get("command") or "").strip("\n")
            if "\n" in command:
                click.echo(f"  - {s['name']} ({s['kind']}):")
                click.echo("\n".join(f"      {ln}".rstrip() for ln in command.splitlines()))
            else:
                click.echo(f"  - {s['name']} ({s['kind']}): {command}")


@cli.command()
@server_options
@click.argument("job_id")
@click.pass_obj
def cancel(settings, job_id):
    """Cancel a pending or running job."""
    job = api_call(settings, "POST", f"/api/jobs/{job_id}/cancel")
    click.echo(f"job {job['id']}: {job['status']}")


@cli.command()
@server_options
@click.argument("job_id")
@click.option("--follow/--no-follow", "follow_", default=True, show_default=True,
              help="Follow the new job's log to its end (exit status as for run), or print "
                   "its id and return.")
@level_option
@click.pass_obj
def rerun(settings, job_id, follow_, level):
    """Start a new job from JOB_ID's definition and, as run does, follow its log to the
    end (--no-follow: print the new job's id and return)."""
    job = api_call(settings, "POST", f"/api/jobs/{job_id}/rerun")
    printer = Printer()
    printer.note(f"job {job['id']} ({job['name']}) queued on {settings.url}")
    if not follow_:
        click.echo(job["id"])
        return
    end = _follow_job(settings, job, level, printer)
    sys.exit(_finish(end, printer))


@cli.command("exec", context_settings={"allow_interspersed_args": False})
@server_options
@click.option("--name", help="The job's name and the lines' source (default: the command).")
@click.option("--step", default="run", show_default=True)
@parse_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_(settings, name, step, parse, command):
    """Run COMMAND, its output live as a new job's lines; the job ends completed or failed
    by its exit status, which quaero exits with.

    Options come before COMMAND; everything from COMMAND on (or after --) is the command's:
    quaero exec --name build -- make -j4."""
    from ..producer import run_exec
    sys.exit(run_exec(settings.url, settings.token, list(command), name, step, parse))


@cli.command(context_settings={"allow_interspersed_args": False})
@server_options
@click.option("--job", "job_id", help="Add to this job instead of creating one.")
@click.option("--name", help="The new job's name and the lines' source.")
@click.option("--status", type=click.Choice(["completed", "failed"]),
              help="How the job ends once the input has ended  [default: completed for a new "
                   "job; a --job is left as it is]. Exit status 1 for failed.")
@parse_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def pipe(settings, job_id, name, status, parse, command):
    """Standard input, line by line, into a job (and through to standard output).

    With a COMMAND (after --), it runs once the input has ended, its output into the job
    too, and the job ends by its exit status, which quaero exits with:

    \b
      make 2>&1 | quaero pipe --name build
      make 2>&1 | quaero pipe --name build --status failed
      { make; echo $? >rc; } 2>&1 | quaero pipe --name build -- sh -c 'exit $(cat rc)'
    """
    if status and command:
        raise click.UsageError("give --status or a COMMAND, not both")
    from ..producer import run_pipe
    sys.exit(run_pipe(settings.url, settings.token, job_id, name, status=status,
                      check=list(command) or None, parse=parse))


def main(argv=None):
    """The ``quaero`` command; ``quaero.__main__`` patches gevent first for ``run --local``."""
    prog = "python -m quaero" if sys.argv[0].endswith("__main__.py") else "quaero"
    try:
        cli.main(args=argv, prog_name=prog)
    except KeyboardInterrupt:
        sys.exit(130)
