"""Alert rules and destinations: ``*.toml`` files in ``QUAERO_ALERTS_DIR``::

    [[destination]]
    name = "ops"
    type = "webhook"               # webhook | slack | ntfy | email
    url = "https://hooks.example/quaero"

    [[rule]]
    name = "timeouts"
    kind = "match"                 # job_failed | match | absence | long_running
    level = "error"
    q = "timeout"
    threshold = 5
    window = 60
    notify = ["ops"]

:class:`AlertLibrary` reads the folder again when a file changes, as the job definitions
do (``runner.definitions``): a file that does not load is kept with its problem, listed
and reported once in the service log; its rules and destinations are not used.
"""
import fnmatch
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field

from ..levels import LEVELS
from ..queries import LineFilter
from ..runner.definitions import toml_files

log = logging.getLogger("quaero.alerts")

KINDS = ("job_failed", "match", "absence", "long_running")
TYPES = ("webhook", "slack", "ntfy", "email")
NAME_RE = re.compile(r"[^\x00-\x1f/]{1,200}\Z")
MAX_WINDOW = 7 * 86400
MAX_THRESHOLD = 10000
_COMMON = {"name", "kind", "notify", "description"}
RULE_KEYS = {
    "job_failed": _COMMON | {"definition", "cancelled"},
    "long_running": _COMMON | {"definition", "longer_than"},
    "match": _COMMON | {"level", "q", "source", "job", "attributes", "threshold", "window"},
    "absence": _COMMON | {"level", "q", "source", "job", "attributes", "window"},
}
DEST_KEYS = {
    "webhook": {"name", "type", "url", "template", "content_type", "headers"},
    "slack": {"name", "type", "url"},
    "ntfy": {"name", "type", "url", "token", "priority"},
    "email": {"name", "type", "to", "subject"},
}


class AlertFileError(Exception):
    pass


@dataclass(frozen=True)
class Destination:
    name: str
    type: str
    url: str | None = None
    template: str | None = None
    content_type: str = "application/json"
    headers: tuple = ()             # ((name, value), ...)
    token: str | None = None        # ntfy
    priority: str | None = None     # ntfy
    to: tuple = ()                  # email recipients
    subject: str | None = None      # email subject template
    path: str = ""

    def json(self):
        out = {"name": self.name, "type": self.type, "file": os.path.basename(self.path)}
        if self.url:
            out["url"] = _redact_url(self.url)
        if self.to:
            out["to"] = list(self.to)
        return out


@dataclass(frozen=True, eq=False)   # hashed by identity: the matcher keeps sets of rules
class Rule:
    name: str
    kind: str
    notify: tuple
    description: str = ""
    definition: str = "*"           # job_failed, long_running: a name pattern
    cancelled: bool = False         # job_failed: cancelled jobs too
    longer_than: float = 0.0        # long_running: seconds
    threshold: int = 1              # match
    window: float = 0.0             # match, absence: seconds
    level: str = "debug"            # match, absence: the filter, as the API has it
    q: str | None = None
    source: str | None = None
    job: str | None = None          # a job definition (or name) pattern; None: any line
    attrs: tuple = ()               # ((key, text), ...)
    path: str = ""
    line_filter: LineFilter = field(default=None, compare=False, repr=False)

    @property
    def on_lines(self):
        return self.kind in ("match", "absence")

    def signature(self):
        """What the rule's saved state depends on: a changed filter or window starts over."""
        return repr((self.kind, self.threshold, self.window, self.level, self.q, self.source,
                     self.job, self.attrs, self.longer_than, self.definition, self.cancelled))

    def matches_job(self, name, definition):
        """Whether a job (its definition, else its name) is one the rule is about."""
        pattern = self.job if self.on_lines else self.definition
        return pattern is None or fnmatch.fnmatchcase(definition or name or "", pattern)

    def search_query(self):
        """The search page's address parameters for this rule's filter."""
        params = []
        if self.q:
            params.append(("q", self.q))
        if self.level != "debug":
            params.append(("level", self.level))
        params += [(f"attr.{k}", v) for k, v in self.attrs]
        return params

    def json(self):
        out = {"name": self.name, "kind": self.kind, "notify": list(self.notify),
               "file": os.path.basename(self.path)}
        if self.description:
            out["description"] = self.description
        if self.on_lines:
            out["filter"] = {k: v for k, v in (("level", self.level), ("q", self.q),
                                                ("source", self.source), ("job", self.job))
                             if v is not None}
            out["filter"].update({f"attr.{k}": v for k, v in self.attrs})
            out["window"] = self.window
            if self.kind == "match":
                out["threshold"] = self.threshold
        else:
            out["definition"] = self.definition
            if self.kind == "long_running":
                out["longer_than"] = self.longer_than
            else:
                out["cancelled"] = self.cancelled
        return out


def _redact_url(url):
    """A destination's address without what may be a secret: its password, and the path
    of a Slack-style hook (the token is the path)."""
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(not a URL)"
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}/…" if parts.path not in ("", "/") else f"{parts.scheme}://{host}/"


def _text(raw, key, where, required=False, max_len=2000):
    value = raw.get(key)
    if value is None:
        if required:
            raise AlertFileError(f"{where}: {key} is required")
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise AlertFileError(f"{where}: {key} must be a non-empty string "
                             f"(at most {max_len} characters)")
    return value


def _number(raw, key, where, low, high, default=None, integer=False):
    value = raw.get(key, default)
    if value is None:
        raise AlertFileError(f"{where}: {key} is required")
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (integer and not isinstance(value, int)) or not low <= value <= high):
        kind = "a whole number" if integer else "a number"
        raise AlertFileError(f"{where}: {key} must be {kind} from {low:g} to {high:g}")
    return value


def _unknown(raw, allowed, where):
    unknown = sorted(k for k in set(raw) - allowed if not k.startswith("attr."))
    if unknown:
        raise AlertFileError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def _http_url(raw, where):
    url = _text(raw, "url", where, required=True)
    if not url.lower().startswith(("http://", "https://")):
        raise AlertFileError(f"{where}: url must be an http(s) address")
    return url


def parse_destination(raw, where, path):
    if not isinstance(raw, dict):
        raise AlertFileError(f"{where} must be a table ([[destination]])")
    name = _text(raw, "name", where, required=True, max_len=200)
    where = f"destination {name!r}"
    kind = raw.get("type")
    if kind not in TYPES:
        raise AlertFileError(f"{where}: type must be one of {', '.join(TYPES)}")
    _unknown(raw, DEST_KEYS[kind], where)
    if kind == "email":
        to = raw.get("to")
        if isinstance(to, str):
            to = [to]
        if (not isinstance(to, list) or not to
                or not all(isinstance(a, str) and "@" in a and "\n" not in a for a in to)):
            raise AlertFileError(f"{where}: to must be a list of e-mail addresses")
        return Destination(name, kind, to=tuple(to), subject=_text(raw, "subject", where),
                           path=path)
    url = _http_url(raw, where)
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and "\n" not in k + v
            for k, v in headers.items()):
        raise AlertFileError(f"{where}: headers must be a table of \"Name\" = \"value\"")
    template = _text(raw, "template", where, max_len=20000)
    if template is not None:
        from .notify import check_template
        problem = check_template(template)
        if problem:
            raise AlertFileError(f"{where}: template: {problem}")
    return Destination(name, kind, url=url, template=template,
                       content_type=_text(raw, "content_type", where) or "application/json",
                       headers=tuple(headers.items()), token=_text(raw, "token", where),
                       priority=_text(raw, "priority", where), path=path)


def parse_rule(raw, where, path):
    if not isinstance(raw, dict):
        raise AlertFileError(f"{where} must be a table ([[rule]])")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AlertFileError(f"{where}: name is required, 1 to 200 characters without '/' "
                             "or control characters")
    where = f"rule {name!r}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise AlertFileError(f"{where}: kind must be one of {', '.join(KINDS)}")
    _unknown(raw, RULE_KEYS[kind], where)
    notify = raw.get("notify", [])
    if isinstance(notify, str):
        notify = [notify]
    if not isinstance(notify, list) or not all(isinstance(n, str) for n in notify):
        raise AlertFileError(f"{where}: notify must be a list of destination names")
    common = dict(name=name, kind=kind, notify=tuple(notify), path=path,
                  description=_text(raw, "description", where) or "")
    if kind in ("job_failed", "long_running"):
        common["definition"] = _text(raw, "definition", where, max_len=200) or "*"
        if kind == "job_failed":
            cancelled = raw.get("cancelled", False)
            if not isinstance(cancelled, bool):
                raise AlertFileError(f"{where}: cancelled must be true or false")
            return Rule(cancelled=cancelled, **common)
        return Rule(longer_than=float(_number(raw, "longer_than", where, 1, 30 * 86400)),
                    **common)
    level = raw.get("level", "debug")
    level = {"warning": "warn"}.get(level, level)
    if level not in LEVELS:
        raise AlertFileError(f"{where}: level must be one of {', '.join(LEVELS)}")
    q = _text(raw, "q", where, max_len=200)
    if q is not None and "\x00" in q:
        raise AlertFileError(f"{where}: q cannot contain NUL")
    source = _text(raw, "source", where, max_len=200)
    job = _text(raw, "job", where, max_len=200)
    attrs = raw.get("attributes", {})
    if not isinstance(attrs, dict):
        raise AlertFileError(f"{where}: attributes must be a table of KEY = \"value\"")
    attrs = dict(attrs)
    attrs.update({k[len("attr."):]: v for k, v in raw.items() if k.startswith("attr.")})
    for k, v in attrs.items():
        if not k or isinstance(v, (dict, list)):
            raise AlertFileError(f"{where}: attribute {k!r} must have a single value")
    attrs = tuple(sorted((k, _attr_text(v)) for k, v in attrs.items()))
    window = float(_number(raw, "window", where, 1, MAX_WINDOW))
    threshold = 1
    if kind == "match":
        threshold = _number(raw, "threshold", where, 1, MAX_THRESHOLD, default=1, integer=True)
    rule = Rule(level=level, q=q, source=source, job=job, attrs=attrs, window=window,
                threshold=threshold, **common)
    line_filter = LineFilter(min_level=LEVELS[level], q=q, everywhere=True, source=source,
                             attrs=attrs)
    object.__setattr__(rule, "line_filter", line_filter)
    return rule


def _attr_text(value):
    """A filter's value as the API's ``attr.KEY=VALUE`` text (``true``, ``500``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_file(path):
    """``(rules, destinations)`` of one file, or :class:`AlertFileError`."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise AlertFileError(f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise AlertFileError("not valid TOML: the file is not UTF-8") from None
    except OSError as exc:
        raise AlertFileError(f"cannot be read: {exc.strerror}") from None
    unknown = sorted(set(data) - {"rule", "destination"})
    if unknown:
        raise AlertFileError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(unknown)} (allowed: [[rule]], [[destination]])")
    rules = data.get("rule", [])
    dests = data.get("destination", [])
    if not isinstance(rules, list) or not isinstance(dests, list):
        raise AlertFileError("rule and destination must be arrays of tables "
                             "([[rule]], [[destination]])")
    path = os.path.abspath(path)
    return ([parse_rule(r, f"rule {i}", path) for i, r in enumerate(rules, 1)],
            [parse_destination(d, f"destination {i}", path) for i, d in enumerate(dests, 1)])


def resolve_alerts_dir(configured):
    return os.path.abspath(configured or "alerts")


class AlertLibrary:
    """The rules and destinations of one folder, read again whenever a file changes."""

    def __init__(self, alerts_dir):
        self.alerts_dir = alerts_dir
        self.rules = {}
        self.destinations = {}
        self.errors = {}          # file path -> problem
        self.rule_errors = {}     # rule name -> problem (an unknown destination)
        self._signature = None
        self._reported = {}

    def _files(self):
        return toml_files(self.alerts_dir)

    def load(self):
        """Read the folder again if a file changed; True when it did."""
        files = self._files()
        if files == self._signature:
            return False
        rules, dests, errors = {}, {}, {}
        for path, _, _ in files:
            try:
                file_rules, file_dests = parse_file(path)
                for kind, items, into in (("rule", file_rules, rules),
                                          ("destination", file_dests, dests)):
                    for item in items:
                        if item.name in into:
                            raise AlertFileError(
                                f"{kind} {item.name!r} is defined in "
                                f"{os.path.basename(into[item.name].path)} already")
            except AlertFileError as exc:
                errors[path] = str(exc)
                continue
            rules.update((r.name, r) for r in file_rules)
            dests.update((d.name, d) for d in file_dests)
        rule_errors = {}
        for rule in rules.values():
            missing = [n for n in rule.notify if n not in dests]
            if missing:
                rule_errors[rule.name] = ("unknown destination" + ("s " if len(missing) > 1 else " ")
                                          + ", ".join(repr(n) for n in missing))
        for path, mtime, size in files:
            if path in errors and self._reported.get(path) != ((mtime, size), errors[path]):
                self._reported[path] = ((mtime, size), errors[path])
                log.error("alert file %s was not loaded: %s", path, errors[path])
        for name, problem in rule_errors.items():
            log.error("alert rule %r (%s): %s", name, rules[name].path, problem)
        self.rules, self.destinations, self.errors = rules, dests, errors
        self.rule_errors, self._signature = rule_errors, files
        return True

    def usable_rules(self):
        """The rules the evaluator runs: loaded, every destination known."""
        return {n: r for n, r in self.rules.items() if n not in self.rule_errors}

    def json(self):
        self.load()
        rules = []
        for rule in self.rules.values():
            item = rule.json()
            if rule.name in self.rule_errors:
                item["error"] = self.rule_errors[rule.name]
            rules.append(item)
        files = [{"file": os.path.basename(p), "error": e} for p, e in sorted(self.errors.items())]
        return (sorted(rules, key=lambda r: r["name"]),
                sorted((d.json() for d in self.destinations.values()), key=lambda d: d["name"]),
                files)
