"""``python -m quaero exec -- CMD…`` and ``… | python -m quaero pipe``: any program's
output as a job's lines, over HTTP only.

One reader thread per pipe copies each line through (so the output still shows where it
did) and hands it to :class:`quaero.client.LineSender` (never waits: a bounded buffer, a
drop count), whose thread creates the job, posts the lines in batches and resends them
when the server is back. Levels are read as the runner reads them (``levels.line_level``:
stdout ``info``, stderr ``warn``, unless a line starts with a level word). With ``--parse
json|logfmt`` a line that is such a record gives its message, level, attributes and ids
(``quaero.structured``); any other line stays a plain line. ``exec``'s job
ends ``completed``/``failed`` by the exit status, or ``cancelled`` after Ctrl-C/SIGTERM,
which are passed on to the command; ``pipe``'s by ``--status`` or by the exit status of a
command run once the input has ended. Plain threads, no gevent: this is the client side.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from .client import (MAX_MESSAGE_CHARS, TOKEN_MISSING, TOKEN_WRONG, LineSender,
                     leave_signals_to_the_main_thread, now_iso)
from .levels import LEVEL_NAMES, LEVELS, exit_detail, line_level
from .structured import structured_line

FLUSH_TIMEOUT = float(os.environ.get("QUAERO_FLUSH_TIMEOUT", "10"))
MAX_READ = 65536
BUFFER_LINES = 100000     # lines waiting for the server before they are dropped (and counted)


def job_creator(name, step):
    """``LineSender.prepare``: create the job with one step and mark the step running."""
    def prepare(client):
        r = client.post("/api/jobs", json={"name": name, "steps": [step]})
        r.raise_for_status()
        job_id = r.json()["id"]
        client.patch(f"/api/jobs/{job_id}/steps/{step}", json={"status": "running"})
        return {"job_id": job_id, "step": step}
    return prepare


def pump(stream, default_level, sender, echo=None, parse=None):
    """Every line of ``stream`` to ``sender`` (and ``echo``) until end of file; ``parse``
    (``json``/``logfmt``): lines that are such records as structured lines."""
    for raw in iter(lambda: stream.readline(MAX_READ), b""):
        if echo is not None:
            echo.write(raw)
            echo.flush()
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        stamp = now_iso()
        line = structured_line(text, parse, default_level) if parse else None
        if line is not None:
            text = line.pop("message")
        for start in range(0, max(len(text), 1), MAX_MESSAGE_CHARS):
            part = text[start:start + MAX_MESSAGE_CHARS]
            if line is None:
                sender.add({"level": LEVEL_NAMES[line_level(part, default_level)],
                            "message": part, "timestamp": stamp})
            else:
                sender.add({**line, "message": part, "timestamp": stamp})


def _reader(stream, default_level, sender, echo, parse):
    def read():
        leave_signals_to_the_main_thread()
        pump(stream, default_level, sender, echo, parse)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _on_stop_signals(handler):
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def run_exec(url, token, command, name=None, step="run", parse=None):
    """Run ``command``, its output into a new job; returns the exit status to use.
    ``parse``: ``json``/``logfmt``, see :func:`pump`."""
    name = (name or os.path.basename(command[0]))[:200]
    sender = LineSender(url, token, {"source": name}, prepare=job_creator(name, step),
                        max_lines=BUFFER_LINES)
    stopped = []
    proc = _start(command, sender, "exec", process_group=0)
    if proc is None:
        finish(sender, url, token, "failed")
        return 127

    def forward(signum, _frame):  # the command is in its own process group: pass it on
        stopped.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    _on_stop_signals(forward)
    code = _wait_copying(proc, sender, parse, stopped)
    finish(sender, url, token, "cancelled" if stopped else "completed" if code == 0 else "failed")
    return code


def _start(command, sender, verb, **popen):
    """``command`` started with its output piped, or None (said, and sent) if it cannot be."""
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    except OSError as exc:
        message = f"quaero {verb}: cannot run {command[0]}: {exc}"
        sender.add({"level": "error", "message": message, "timestamp": now_iso()})
        print(message, file=sys.stderr)
        return None


def _wait_copying(proc, sender, parse=None, stopped=()):
    """Copy ``proc``'s stdout (``info``) and stderr (``warn``) through and into ``sender``
    until it exits; its exit status as a shell gives it (128 + N after signal N). A failure
    is said in an error line, unless the command was ``stopped`` (the job is cancelled)."""
    started = time.monotonic()
    readers = [_reader(proc.stdout, LEVELS["info"], sender, sys.stdout.buffer, parse),
               _reader(proc.stderr, LEVELS["warn"], sender, sys.stderr.buffer, parse)]
    status = proc.wait()
    for reader in readers:
        reader.join()
    if status and not stopped:  # the job's last error says why it failed, as the runner's do
        sender.add({"level": "error", "timestamp": now_iso(), "message":
                    f"command {os.path.basename(str(proc.args[0]))!r} failed: "
                    f"{exit_detail(status)} after {time.monotonic() - started:.2f} s"})
    return status if status >= 0 else 128 - status


class _Stopped(Exception):
    pass


def run_pipe(url, token, job_id=None, name=None, step="pipe", status=None, check=None,
             parse=None):
    """Standard input into a job (a new one unless ``job_id``), copied to standard output.

    The job then ends ``status`` (``completed``/``failed``; for a new job ``completed``
    unless told, an existing one is left as it is unless told), or, when ``check`` (a
    command) is given, by its exit status: it runs once the input has ended. Returns the
    exit status to use: ``check``'s, else 1 for ``failed``, else 0. ``parse``: ``json``/
    ``logfmt``, see :func:`pump`."""
    if job_id:
        sender = LineSender(url, token, {"job_id": job_id, "source": name or "pipe"},
                            max_lines=BUFFER_LINES)
    else:
        name = (name or "pipe")[:200]
        sender = LineSender(url, token, {"source": name}, prepare=job_creator(name, step),
                            max_lines=BUFFER_LINES)
        status = status or "completed"
    stopped = []

    def stop(signum, _frame):
        stopped.append(signum)
        raise _Stopped()

    _on_stop_signals(stop)
    try:
        pump(sys.stdin.buffer, LEVELS["info"], sender, sys.stdout.buffer, parse)
    except _Stopped:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if stopped:
        finish(sender, url, token, None if job_id else "cancelled")
        return 128 + stopped[0]
    code = 1 if status == "failed" else 0
    if check:
        code = _run_check(check, sender, parse)
        status = "completed" if code == 0 else "failed"
    finish(sender, url, token, status)
    return code


def _run_check(command, sender, parse=None):
    """``pipe -- COMMAND``: its output shows and goes into the job; its exit status."""
    proc = _start(command, sender, "pipe")
    return 127 if proc is None else _wait_copying(proc, sender, parse)


def finish(sender, url, token, status, timeout=FLUSH_TIMEOUT):
    """Deliver what is left (at most ``timeout`` seconds), then end the job ``status``."""
    deadline = time.monotonic() + timeout
    if not sender.close(timeout):
        why = sender.last_error
        if sender.refused == 401:
            why = TOKEN_WRONG if token else TOKEN_MISSING
        print(f"quaero: {sender.dropped} lines not delivered to {url}"
              f"{' (' + why + ')' if why else ''}", file=sys.stderr)
    job_id = sender.fields.get("job_id")
    if status is None or job_id is None:
        return
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=5.0) as client:
        while True:
            try:
                r = client.patch(f"/api/jobs/{job_id}", json={"status": status})
                if r.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                print(f"quaero: could not mark job {job_id} {status}", file=sys.stderr)
                return
            time.sleep(0.5)
