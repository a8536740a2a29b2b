"""``python -m quaero``: run job definitions, follow logs live, list jobs.

    python -m quaero run demo                 # on the server at --url, else in-process
    python -m quaero tail <job-id> [--level debug] [--step build]
    python -m quaero tail --service
    python -m quaero jobs [--status running]
    python -m quaero definitions | cancel <job-id> | rerun <job-id> | grep TEXT [--job ID]

``--url`` (env ``QUAERO_URL``; unset: ``QUAERO_HOST``/``QUAERO_PORT``, where ``python app.py``
listens, default http://127.0.0.1:5000) and ``--token`` (env ``QUAERO_API_TOKEN``) pick the
server. Streams (httpx-sse) resume a dropped connection with ``Last-Event-ID``: each line once.
Exit status of ``run`` and ``tail <job>``: 0 completed, 1 failed, 2 cancelled, 3 deleted.
"""
import json
import os
import sys
import time

import click
import httpx
from httpx_sse import SSEError, connect_sse

DEFAULT_URL = "http://127.0.0.1:5000"
TOKEN_HINT = "pass the API token with --token or the QUAERO_API_TOKEN environment variable"
LEVELS = ("debug", "info", "warn", "error")
LEVEL_RANK = {name: i for i, name in enumerate(LEVELS)}
EXIT = {"completed": 0, "failed": 1, "cancelled": 2, "deleted": 3}
COLORS = {"debug": {"dim": True}, "warn": {"fg": "yellow"}, "error": {"fg": "red", "bold": True}}


class Settings:
    def __init__(self, url, token):
        self.url = url.rstrip("/")
        self.token = token

    def headers(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, read_timeout=30.0):
        return httpx.Client(base_url=self.url, headers=self.headers(),
                            timeout=httpx.Timeout(10.0, read=read_timeout))


def default_url():
    """Where ``python app.py`` listens: ``QUAERO_HOST``/``QUAERO_PORT``; a wildcard host
    is reached on loopback."""
    host = os.environ.get("QUAERO_HOST") or "127.0.0.1"
    port = os.environ.get("QUAERO_PORT") or "5000"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _failure(prefix, response):
    text = f"{prefix}: {response.status_code} {_error_text(response)}"
    if response.status_code == 401:
        text += f" ({TOKEN_HINT})"
    return click.ClickException(text)


def _error_text(response):
    try:
        return response.json().get("error") or response.text
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase


def api_call(settings, method, path, **kwargs):
    try:
        with settings.client() as client:
            r = client.request(method, path, **kwargs)
    except httpx.ConnectError:
        raise
    except httpx.HTTPError as exc:
        raise click.ClickException(f"{settings.url}: {exc.__class__.__name__}: {exc}") from None
    if r.status_code >= 400:
        raise _failure(f"{method} {path}", r)
    return r.json() if r.content else None


# --- printing ----------------------------------------------------------------------------

class Printer:
    def __init__(self, as_json=False, show_job=False):
        self.as_json = as_json
        self.show_job = show_job
        self.steps = {}   # (job id, step name) -> last status printed
        self.jobs = {}

    def lines(self, lines):
        if not lines:
            return
        if self.as_json:
            click.echo("\n".join(json.dumps(ln, ensure_ascii=False) for ln in lines))
            return
        click.echo("\n".join(self.format(ln) for ln in lines))

    def format(self, ln):
        ts = (ln.get("timestamp") or "")[11:23]
        level = ln["level"]
        head = f"{ts} {level.upper():5}"
        if self.show_job and ln.get("job_id"):
            head += f" {ln['job_id'][:8]}"
        if ln.get("step_name"):
            head += f" [{ln['step_name']}]"
        message = ln["message"].replace("\r\n", "\n").replace("\n", "\n    ")
        text = f"{head} {message}"
        style = COLORS.get(level)
        return click.style(text, **style) if style else text

    def status(self, payload):
        job = payload.get("job") or {}
        job_id = job.get("id")
        for step in payload.get("steps") or ():
            key = (job_id, step["name"])
            if self.steps.get(key) != step["status"] and not (
                    key not in self.steps and step["status"] == "pending"):
                self.steps[key] = step["status"]
                self.note(f"step {step['name']}: {step['status']}", job_id)
            self.steps.setdefault(key, step["status"])
        if job_id and self.jobs.get(job_id) != job.get("status"):
            self.jobs[job_id] = job.get("status")
            self.note(f"job {job_id}: {job.get('status')}")

    def note(self, text, job_id=None):
        prefix = f"{job_id[:8]} " if (self.show_job and job_id) else ""
        click.echo(click.style(f"-- {prefix}{text}", fg="cyan"), err=True)


# --- following a stream ------------------------------------------------------------------

def follow(settings, params, printer, after=None, max_wait=None, verbose=False):
    """Print a stream's lines until ``end``; resume after drops with ``Last-Event-ID``.

    Returns the ``end`` payload (job scope), or never returns (service scope)."""
    last_id = after
    retry = 1.0
    failures = 0
    deadline = None if max_wait is None else time.monotonic() + max_wait
    while True:
        headers = settings.headers()
        query = dict(params)
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
            query.pop("limit", None)
        try:
            with httpx.Client(timeout=httpx.Timeout(10.0, read=30.0)) as client:
                with connect_sse(client, "GET", f"{settings.url}/api/logs/stream",
                                 params=list(_flatten(query)), headers=headers) as source:
                    response = source.response
                    if response.status_code != 200:
                        response.read()
                        if response.status_code < 500:
                            raise _failure("stream", response)
                        raise _Retry(f"{response.status_code} {_error_text(response)}")
                    failures = 0
                    for sse in source.iter_sse():
                        if sse.retry:
                            retry = max(sse.retry / 1000.0, 0.1)
                        if sse.event == "logs":
                            data = json.loads(sse.data)
                            fresh = [ln for ln in data["logs"]
                                     if last_id is None or ln["id"] > last_id]
                            if fresh:
                                printer.lines(fresh)
                                last_id = fresh[-1]["id"]
                        elif sse.event == "status":
                            printer.status(json.loads(sse.data))
                        elif sse.event == "end":
                            return json.loads(sse.data)
            if verbose:  # the server ended the stream (lifetime, restart): resume
                printer.note(f"stream closed by the server; resuming after line {last_id}")
        except (httpx.TransportError, SSEError, _Retry) as exc:
            failures += 1
            if failures == 1 or failures % 10 == 0:
                printer.note(f"stream interrupted ({_describe(exc)}); reconnecting")
        if deadline is not None and time.monotonic() > deadline:
            raise click.ClickException("gave up waiting for the stream")
        time.sleep(min(retry * min(failures, 5), 10.0) if failures else 0.05)


class _Retry(Exception):
    pass


def _describe(exc):
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:200]


def _flatten(query):
    for key, value in query.items():
        if isinstance(value, (list, tuple)):
            for v in value:
                yield key, v
        elif value is not None:
            yield key, value


# --- commands ----------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="QUAERO_URL", default=default_url,
              show_default="env QUAERO_HOST/QUAERO_PORT, else " + DEFAULT_URL,
              help="Quaero server (env QUAERO_URL).")
@click.option("--token", envvar="QUAERO_API_TOKEN", default=None,
              help="API token (env QUAERO_API_TOKEN).")
@click.pass_context
def cli(ctx, url, token):
    """Quaero: run jobs and follow their logs live."""
    ctx.obj = Settings(url, token)


def _override(ctx, param, value):
    if value is not None:
        settings = ctx.ensure_object(Settings) if ctx.obj is None else ctx.obj
        if param.name == "url_":
            settings.url = value.rstrip("/")
        else:
            settings.token = value
    return value


def server_options(fn):
    """``--url``/``--token`` also after the command name (``tail ID --url ...``)."""
    fn = click.option("--token", "token_", default=None, expose_value=False, callback=_override,
                      help="API token (env QUAERO_API_TOKEN).")(fn)
    fn = click.option("--url", "url_", default=None, expose_value=False, callback=_override,
                      help="Quaero server (env QUAERO_URL, else QUAERO_HOST/QUAERO_PORT).")(fn)
    return fn


level_option = click.option("--level", type=click.Choice(LEVELS), default="info",
                            show_default=True, help="Show this level and above.")
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")


@cli.command()
@server_options
@click.argument("job_ids", nargs=-1)
@click.option("--service", is_flag=True, help="Follow Quaero's service log.")
@level_option
@click.option("--step", help="Only this step's lines.")
@click.option("--limit", type=click.IntRange(0), default=100, show_default=True,
              help="Lines of backlog to show first.")
@click.option("--all", "from_start", is_flag=True, help="Show the whole log first.")
@click.option("--after", type=click.IntRange(0), help="Start after this line id.")
@json_option
@click.option("--verbose", "-v", is_flag=True, help="Say when the stream is resumed.")
@click.pass_obj
def tail(settings, job_ids, service, level, step, limit, from_start, after, as_json, verbose):
    """Follow the log of jobs (until they end) or of the service."""
    if service == bool(job_ids):
        raise click.UsageError("give job ids, or --service")
    if service and step:
        raise click.UsageError("--step needs a job")
    params = {"scope": "service" if service else "job", "job_id": list(job_ids),
              "level": level, "step": step, "limit": limit}
    if from_start and after is None:
        after = 0
    printer = Printer(as_json, show_job=len(job_ids) > 1)
    end = _follow_until_ctrl_c(settings, params, printer, "stopped following", after=after,
                               verbose=verbose)
    sys.exit(_finish(end, printer))


def _follow_until_ctrl_c(settings, params, printer, goodbye, **kwargs):
    """:func:`follow`; Ctrl-C ends the command with ``goodbye`` (exit 130), no traceback."""
    try:
        return follow(settings, params, printer, **kwargs)
    except KeyboardInterrupt:
        printer.note(goodbye)
        sys.exit(130)


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
@click.option("--local", is_flag=True, help="Run in this process instead of on a server.")
@click.option("--detach", is_flag=True, help="Start the job, print its id, do not follow.")
@json_option
@click.pass_obj
def run(settings, definition, level, local, detach, as_json):
    """Start a job from a definition and follow its log to the end."""
    printer = Printer(as_json)
    if not local:
        try:
            job = api_call(settings, "POST", "/api/jobs", json={"definition": definition})
        except httpx.ConnectError:
            printer.note(f"no Quaero server at {settings.url}: running the job in this process")
            local = True
    if local:
        from .local_run import run_local
        status = run_local(definition, level, printer, detach)
        sys.exit(130 if status is None else EXIT.get(status, 1))
    if detach:
        click.echo(job["id"])
        return
    printer.note(f"job {job['id']} ({job['name']}) queued on {settings.url}")
    end = _follow_job(settings, job, level, printer)
    sys.exit(_finish(end, printer))


def _follow_job(settings, job, level, printer):
    return _follow_until_ctrl_c(
        settings, {"scope": "job", "job_id": [job["id"]], "level": level}, printer,
        f"stopped following; the job goes on. Cancel it with: python -m quaero cancel {job['id']}",
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
    data = _remote(settings, "GET", "/api/jobs", params={"status": status, "limit": limit})
    if as_json:
        click.echo(json.dumps(data, indent=2))
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


def _remote(settings, method, path, **kwargs):
    try:
        return api_call(settings, method, path, **kwargs)
    except httpx.ConnectError as exc:
        raise click.ClickException(f"cannot reach {settings.url}: {exc}") from None


@cli.command()
@server_options
@json_option
@click.pass_obj
def definitions(settings, as_json):
    """List the job definitions the server has."""
    data = _remote(settings, "GET", "/api/job-definitions")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for d in data["definitions"]:
        if d.get("error"):
            click.echo(click.style(f"{d.get('name') or d.get('file')}: BROKEN, cannot be started: "
                                   f"{d['error']}", fg="red"))
            continue
        click.echo(f"{d['name']}: {d.get('description') or ''}")
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
    job = _remote(settings, "POST", f"/api/jobs/{job_id}/cancel")
    click.echo(f"job {job['id']}: {job['status']}")


@cli.command()
@server_options
@click.argument("job_id")
@click.option("--follow/--no-follow", "follow_", default=True, show_default=True)
@level_option
@click.pass_obj
def rerun(settings, job_id, follow_, level):
    """Start a new job from the same definition."""
    job = _remote(settings, "POST", f"/api/jobs/{job_id}/rerun")
    printer = Printer()
    printer.note(f"job {job['id']} ({job['name']}) queued on {settings.url}")
    if not follow_:
        click.echo(job["id"])
        return
    end = _follow_job(settings, job, level, printer)
    sys.exit(_finish(end, printer))


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--name", help="The job's name and the lines' source (default: the command).")
@click.option("--step", default="run", show_default=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_(settings, name, step, command):
    """Run COMMAND, its output live as a new job's lines (quaero.producer)."""
    from .producer import run_exec
    sys.exit(run_exec(settings.url, settings.token, list(command), name, step))


@cli.command(help="Standard input, line by line, into a job (quaero.producer).")
@click.option("--job", "job_id", help="Add to this job instead of creating one.")
@click.option("--name", help="The new job's name and the lines' source.")
@click.pass_obj
def pipe(settings, job_id, name):
    from .producer import run_pipe
    sys.exit(run_pipe(settings.url, settings.token, job_id, name))


def main(argv=None):
    import gevent
    hub = gevent.get_hub()
    # Ctrl-C still raises KeyboardInterrupt in the command; the hub need not print it.
    hub.NOT_ERROR = tuple(hub.NOT_ERROR) + (KeyboardInterrupt,)
    from .cli_grep import grep   # its own module: this one is full
    cli.add_command(grep)
    try:
        cli.main(args=argv, prog_name="python -m quaero")
    except KeyboardInterrupt:
        sys.exit(130)
