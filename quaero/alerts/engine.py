"""The rules' state machines, pure: a rule's state is a JSON-able dict, the time is passed
in (milliseconds since 1970), and each call returns the notifications it decided
(:class:`Notice`). The evaluator saves the states with how far it has read, in one
transaction with the notices, so that a new evaluator resumes from exactly there.

``match`` (at least ``threshold`` matching lines within ``window`` seconds): ``ok`` keeps
the times of the matches within the window; when they reach the threshold it fires once
(the count, the first lines) and becomes ``firing``, which counts matches per window and
says nothing more; a window with fewer than the threshold resolves it.
``absence`` (no matching line for ``window`` seconds): fires once the last match is
``window`` old, resolves at the next match.
Each notice has an idempotency key: the rule, its state, and the episode (the id of the
line that made a ``match`` fire, the time of the last match before an ``absence``)."""
from dataclasses import dataclass, field

MAX_TIMES = 10000   # a window's match times kept (the threshold's bound)
FIRST_LINES = 5
MESSAGE_CHARS = 2000


@dataclass
class Notice:
    rule: str
    kind: str
    state: str                  # firing | resolved | test
    key: str
    count: int
    summary: str
    lines: list = field(default_factory=list)
    job: dict | None = None


def compact(line):
    """A line as a notice carries it (a very long message cut)."""
    out = dict(line)
    if len(out.get("message") or "") > MESSAGE_CHARS:
        out["message"] = out["message"][:MESSAGE_CHARS] + "…"
    return out


def describe(rule):
    parts = []
    if rule.level != "debug":
        parts.append(f"level ≥ {rule.level}")
    if rule.q:
        parts.append(f"containing {rule.q!r}")
    if rule.source:
        parts.append(f"from {rule.source!r}")
    if rule.job:
        parts.append(f"of jobs {rule.job!r}")
    parts += [f"{k}={v}" for k, v in rule.attrs]
    return ", ".join(parts) or "any line"


def _seconds(s):
    s = float(s)
    if s >= 3600 and s % 3600 == 0:
        return f"{s / 3600:g} h"
    if s >= 60 and s % 60 == 0:
        return f"{s / 60:g} min"
    return f"{s:g} s"


def fresh_state(rule, now_ms):
    if rule.kind == "match":
        return {"sig": rule.signature(), "state": "ok", "times": [], "first": []}
    if rule.kind == "absence":
        return {"sig": rule.signature(), "state": "ok", "last": now_ms}
    return {"sig": rule.signature(), "state": "ok"}


def usable(rule, state):
    """``state`` unless it was saved for another version of the rule."""
    return state if state and state.get("sig") == rule.signature() else None


def on_lines(rule, st, lines, now_ms):
    """``lines``: the rule's matches among new lines (id order). Changes ``st``."""
    if not lines:
        return []
    if rule.kind == "absence":
        return _absence_lines(rule, st, lines, now_ms)
    if rule.kind != "match":
        return []
    if st["state"] == "firing":
        st["window_count"] += len(lines)
        st["total"] += len(lines)
        return []
    cutoff = now_ms - rule.window * 1000
    times = [t for t in st["times"] if t > cutoff] + [now_ms] * len(lines)
    first = [ln for ln in st["first"] if ln["_t"] > cutoff]
    first += [dict(compact(ln), _t=now_ms) for ln in lines[:FIRST_LINES - len(first)]]
    st["times"], st["first"] = times[-MAX_TIMES:], first
    if len(times) < rule.threshold:
        return []
    episode = lines[-1]["id"]
    shown = [{k: v for k, v in ln.items() if k != "_t"} for ln in first]
    st.update(state="firing", times=[], first=[], episode=episode, total=len(times),
              window_end=now_ms + int(rule.window * 1000), window_count=0, since=now_ms)
    return [Notice(rule.name, rule.kind, "firing", f"{rule.name}/firing/{episode}", len(times),
                   f"{rule.name}: {len(times)} line{'s' if len(times) != 1 else ''} "
                   f"({describe(rule)}) within {_seconds(rule.window)} "
                   f"(threshold {rule.threshold})", shown)]


def _absence_lines(rule, st, lines, now_ms):
    st["last"] = now_ms
    if st["state"] != "firing":
        return []
    episode = st.pop("episode")
    st["state"] = "ok"
    silent = (now_ms - episode) / 1000
    return [Notice(rule.name, rule.kind, "resolved", f"{rule.name}/resolved/{episode}",
                   len(lines), f"{rule.name} resolved: a line ({describe(rule)}) came after "
                   f"{_seconds(round(silent))} without one",
                   [compact(ln) for ln in lines[:FIRST_LINES]])]


def on_tick(rule, st, now_ms):
    """Time passed: an ``absence`` may fire, a firing ``match`` may resolve."""
    if rule.kind == "absence" and st["state"] == "ok" and now_ms - st["last"] >= rule.window * 1000:
        episode = st["last"]
        st.update(state="firing", episode=episode)
        return [Notice(rule.name, rule.kind, "firing", f"{rule.name}/firing/{episode}", 0,
                       f"{rule.name}: no line ({describe(rule)}) for "
                       f"{_seconds(rule.window)}")]
    if rule.kind == "match" and st["state"] == "firing" and now_ms >= st["window_end"]:
        if st["window_count"] >= rule.threshold:
            st["window_end"] = now_ms + int(rule.window * 1000)
            st["window_count"] = 0
            return []
        episode, total = st["episode"], st["total"]
        st.clear()
        st.update(fresh_state(rule, now_ms))
        return [Notice(rule.name, rule.kind, "resolved", f"{rule.name}/resolved/{episode}",
                       total, f"{rule.name} resolved: fewer than {rule.threshold} matching "
                       f"line{'s' if rule.threshold != 1 else ''} in the last "
                       f"{_seconds(rule.window)} ({total} while it fired)")]
    return []


def job_notice(rule, job, now_ms, lines=()):
    """A ``job_failed`` or ``long_running`` notice about ``job`` (its JSON)."""
    if rule.kind == "job_failed":
        key = f"{rule.name}/job/{job['id']}"
        summary = f"{rule.name}: job {job['name']} ({job['id']}) {job['status']}"
    else:
        key = f"{rule.name}/running/{job['id']}"
        summary = (f"{rule.name}: job {job['name']} ({job['id']}) has been running for more "
                   f"than {_seconds(rule.longer_than)}")
    return Notice(rule.name, rule.kind, "firing", key, 1, summary,
                  [compact(ln) for ln in lines][:FIRST_LINES], job)


def payload(notice, rule, base_url):
    """What every destination is sent for ``notice`` (the webhook's JSON body)."""
    from ..models import iso, utcnow
    return {"rule": notice.rule, "kind": notice.kind, "state": notice.state,
            "count": notice.count, "summary": notice.summary,
            "url": link(notice, rule, base_url), "job": notice.job, "lines": notice.lines,
            "at": iso(utcnow())}


def link(notice, rule, base):
    """Where a notification points: the job's line (``/jobs/<id>#L<n>``), else a search
    for the rule's words or attributes, else the home page (the test: ``/alerts``)."""
    from urllib.parse import urlencode
    if notice.job:
        first = next((ln for ln in notice.lines if ln.get("line_number")), None)
        return f"{base}/jobs/{notice.job['id']}" + (f"#L{first['line_number']}" if first else "")
    first = next((ln for ln in notice.lines if ln.get("job_id")), None)
    if first is not None:
        return f"{base}/jobs/{first['job_id']}#L{first['line_number']}"
    if rule is not None and rule.on_lines and (rule.q or rule.attrs):
        return f"{base}/search?{urlencode(rule.search_query())}"
    return f"{base}/alerts" if notice.state == "test" else f"{base}/"
