"""What every command shares: finding the server, calling the API, printing lines and
following a stream (resumed with ``Last-Event-ID``, each line once)."""
import json
import os
import sys
import time

import click
import httpx
from httpx_sse import SSEError, connect_sse

from ..client import TOKEN_MISSING, TOKEN_WRONG
from ..levels import NAMES as LEVELS

DEFAULT_URL = "http://127.0.0.1:5000"
CONNECT_ATTEMPTS = 3        # a stream's first connection: tries before saying there is no server
RETRY_FOR = 60.0            # seconds a stream keeps reconnecting to a server that went away
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


def _failure(prefix, response, settings):
    """A refusal as one line; a 401 says whether a token was missing or wrong."""
    text = f"{prefix}: {response.status_code} {_error_text(response)}"
    if response.status_code == 401:
        text += f" ({TOKEN_WRONG if settings.token else TOKEN_MISSING})"
    return click.ClickException(text)


class Unreachable(click.ClickException):
    """No Quaero server answers at the URL (nothing listens, no such host)."""


def unreachable(settings, exc):
    return Unreachable(f"cannot reach the Quaero server at {settings.url}: {_describe(exc)}")


def _error_text(response):
    try:
        return response.json().get("error") or response.text
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase


def api_call(settings, method, path, **kwargs):
    try:
        with settings.client() as client:
            r = client.request(method, path, **kwargs)
    except httpx.ConnectError as exc:
        raise unreachable(settings, exc) from None
    except httpx.HTTPError as exc:
        raise click.ClickException(f"{settings.url}: {exc.__class__.__name__}: {exc}") from None
    if r.status_code >= 400:
        raise _failure(f"{method} {path}", r, settings)
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
        if style:
            text = click.style(text, **style)
        fields = fields_text(ln)
        return f"{text} {click.style(fields, dim=True)}" if fields else text

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


def fields_text(ln):
    """A line's attributes and ids, compactly: ``key=value ...`` (logfmt's quoting)."""
    pairs = list((ln.get("attributes") or {}).items())
    pairs += [(k, ln[k]) for k in ("trace_id", "span_id") if ln.get(k)]
    return " ".join(f"{k}={_field_value(v)}" for k, v in pairs)


def _field_value(value):
    if isinstance(value, str):
        if value and not any(c in value for c in ' ="\\') and value.isprintable():
            return value
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value)   # numbers as JSON writes them, true/false


# --- following a stream ------------------------------------------------------------------

def follow(settings, params, printer, after=None, max_wait=None, verbose=False,
           retry_for=RETRY_FOR):
    """Print a stream's lines until ``end``; resume after drops with ``Last-Event-ID``.

    A server that cannot be reached is said at once; with no answer to the first
    ``CONNECT_ATTEMPTS`` tries, or to any try for ``retry_for`` seconds after a stream was
    open (a restart), it gives up (a ``ClickException``). Returns the ``end`` payload (job
    scope), or never returns (service scope)."""
    last_id = after
    retry = 1.0
    failures = 0
    connected = False
    failing_since = None
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
                    if response.status_code == 204 and last_id is not None:
                        # a resume after the last line of jobs that have ended (the stream
                        # closed as they ended): nothing more comes; say how they ended
                        return _ended(client, settings, params.get("job_id") or [])
                    if response.status_code != 200:
                        response.read()
                        if response.status_code < 500:
                            raise _failure("stream", response, settings)
                        raise _Retry(f"{response.status_code} {_error_text(response)}")
                    if failures:
                        printer.note(f"stream back after {failures} failed "
                                     f"attempt{'s' if failures > 1 else ''}")
                    failures, failing_since, connected = 0, None, True
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
            now = time.monotonic()
            failing_since = failing_since or now
            if not connected and isinstance(exc, httpx.ConnectError) \
                    and failures >= CONNECT_ATTEMPTS:
                raise unreachable(settings, exc) from None
            if now - failing_since >= retry_for:
                raise click.ClickException(
                    f"gave up: no stream from {settings.url} for {retry_for:g} s "
                    f"({_describe(exc)})") from None
            if failures == 1 or failures % 10 == 0:
                what = ("cannot reach the Quaero server at " + settings.url
                        if isinstance(exc, httpx.ConnectError) else "stream interrupted")
                then = f"reconnecting for at most {retry_for:g} s" if connected else "trying again"
                printer.note(f"{what} ({_describe(exc)}); {then}")
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
json_option = click.option("--json", "as_json", is_flag=True,
                           help="One JSON object per line, as the API gives it (with its "
                                "attributes, trace_id and span_id when it has them).")


def _attr_pairs(ctx, param, values):
    pairs = []
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx, param)
        pairs.append((key, wanted))
    return pairs


def filter_options(fn):
    """``--attr KEY=VALUE`` (repeatable) and ``--trace-id HEX``: the API's ``attr.KEY`` and
    ``trace_id`` filters."""
    fn = click.option("--trace-id", "trace_id", metavar="HEX",
                      help="Only the lines of this trace (32 hex digits).")(fn)
    fn = click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE",
                      callback=_attr_pairs,
                      help="Only lines whose attribute KEY is VALUE (compared as text: 500 "
                           "matches the number 500). Repeatable: all must match.")(fn)
    return fn


def filter_params(attrs, trace_id):
    """The query parameters of ``--attr``/``--trace-id``."""
    params = {}
    for key, wanted in attrs:
        params.setdefault(f"attr.{key}", []).append(wanted)
    if trace_id:
        params["trace_id"] = trace_id
    return params


def _ended(client, settings, job_ids):
    """The ``end`` payload of jobs that have ended, from ``GET /api/jobs/<id>``."""
    jobs = []
    for job_id in job_ids:
        r = client.get(f"{settings.url}/api/jobs/{job_id}", headers=settings.headers())
        status = r.json().get("status") if r.status_code == 200 else "deleted"
        jobs.append({"id": job_id, "status": status})
    return {"job": jobs[-1], "jobs": jobs} if jobs else {}


def follow_until_ctrl_c(settings, params, printer, goodbye, **kwargs):
    """:func:`follow`; Ctrl-C ends the command with ``goodbye`` (exit 130), no traceback."""
    try:
        return follow(settings, params, printer, **kwargs)
    except KeyboardInterrupt:
        printer.note(goodbye)
        sys.exit(130)
