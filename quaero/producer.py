"""``python -m quaero exec -- CMD…`` and ``… | python -m quaero pipe``: any program's
output as a job's lines, over HTTP only.

One reader thread per pipe copies each line through (so the output still shows where it
did) and hands it to :class:`quaero.client.LineSender` (never waits: a bounded buffer, a
drop count), whose thread creates the job, posts the lines in batches and resends them
when the server is back. Levels are read as the runner reads them (``runner.line_level``:
stdout ``info``, stderr ``warn``, unless a line starts with a level word). The job ends
``completed``/``failed`` by the exit status, or ``cancelled`` after Ctrl-C/SIGTERM, which
are passed on to the command. The process runs without gevent (see ``__main__``).
"""
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from .client import MAX_MESSAGE_CHARS, LineSender, leave_signals_to_the_main_thread, now_iso
from .models import LEVEL_NAMES, LEVELS
from .runner import line_level

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


def pump(stream, default_level, sender, echo=None):
    """Every line of ``stream`` to ``sender`` (and ``echo``) until end of file."""
    for raw in iter(lambda: stream.readline(MAX_READ), b""):
        if echo is not None:
            echo.write(raw)
            echo.flush()
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        stamp = now_iso()
        for start in range(0, max(len(text), 1), MAX_MESSAGE_CHARS):
            part = text[start:start + MAX_MESSAGE_CHARS]
            sender.add({"level": LEVEL_NAMES[line_level(part, default_level)],
                        "message": part, "timestamp": stamp})


def _reader(stream, default_level, sender, echo):
    def read():
        leave_signals_to_the_main_thread()
        pump(stream, default_level, sender, echo)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _on_stop_signals(handler):
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def run_exec(url, token, command, name=None, step="run"):
    """Run ``command``, its output into a new job; returns the exit status to use."""
    name = (name or os.path.basename(command[0]))[:200]
    sender = LineSender(url, token, {"source": name}, prepare=job_creator(name, step),
                        max_lines=BUFFER_LINES)
    stopped = []
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                process_group=0)
    except OSError as exc:
        sender.add({"level": "error", "message": f"quaero exec: cannot run {command[0]}: {exc}",
                    "timestamp": now_iso()})
        print(f"quaero exec: cannot run {command[0]}: {exc}", file=sys.stderr)
        finish(sender, url, token, "failed")
        return 127

    def forward(signum, _frame):  # the command is in its own process group: pass it on
        stopped.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    _on_stop_signals(forward)
    readers = [_reader(proc.stdout, LEVELS["info"], sender, sys.stdout.buffer),
               _reader(proc.stderr, LEVELS["warn"], sender, sys.stderr.buffer)]
    status = proc.wait()
    for reader in readers:
        reader.join()
    finish(sender, url, token,
           "cancelled" if stopped else "completed" if status == 0 else "failed")
    return status if status >= 0 else 128 - status


class _Stopped(Exception):
    pass


def run_pipe(url, token, job_id=None, name=None, step="pipe"):
    """Standard input into a job (a new one unless ``job_id``), copied to standard output."""
    if job_id:
        sender = LineSender(url, token, {"job_id": job_id, "source": name or "pipe"},
                            max_lines=BUFFER_LINES)
    else:
        name = (name or "pipe")[:200]
        sender = LineSender(url, token, {"source": name}, prepare=job_creator(name, step),
                            max_lines=BUFFER_LINES)
    stopped = []

    def stop(signum, _frame):
        stopped.append(signum)
        raise _Stopped()

    _on_stop_signals(stop)
    try:
        pump(sys.stdin.buffer, LEVELS["info"], sender, sys.stdout.buffer)
    except _Stopped:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    finish(sender, url, token, None if job_id else "cancelled" if stopped else "completed")
    return 128 + stopped[0] if stopped else 0


def finish(sender, url, token, status, timeout=FLUSH_TIMEOUT):
    """Deliver what is left (at most ``timeout`` seconds), then end the job ``status``."""
    deadline = time.monotonic() + timeout
    if not sender.close(timeout):
        print(f"quaero: {sender.dropped} lines not delivered to {url}"
              f"{' (' + sender.last_error + ')' if sender.last_error else ''}", file=sys.stderr)
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
