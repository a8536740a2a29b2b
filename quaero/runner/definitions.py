"""Job definitions: one ``*.toml`` file each in ``QUAERO_JOBS_DIR``::

    description = "Build and test"          # name defaults to the file's stem
    [[steps]]
    name = "build"
    run = "make -j4"                        # a shell command, in its own process group
    timeout = 600                           # seconds (optional)
    env = { CC = "clang" }                  # added to the environment (optional)
    [[steps]]
    name = "report"
    python = "reports:summarise"            # module:function, called in a greenlet
    continue_on_error = true                # a failure does not fail the job (optional)

A definition may run on a schedule (``runner.cron``)::

    schedule = "*/15 * * * *"               # 5-field cron expression
    timezone = "Europe/Paris"               # the expression's time zone (default UTC)
    overlap = "skip"                        # a tick while a run is on: skip (default) or queue

:class:`DefinitionLibrary` re-reads the folder when a file changes; a file that does not
load is kept with its problem (listed, reported once in the service log, not startable).
"""
import logging
import os
import re
import tomllib
from dataclasses import dataclass

from ..errors import DefinitionInvalid

log = logging.getLogger("quaero.runner")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\Z")
STEP_NAME_RE = re.compile(r"[^\x00-\x1f/]{1,200}\Z")
TARGET_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z")
DEF_KEYS = {"name", "description", "steps", "schedule", "timezone", "overlap"}
STEP_KEYS = {"name", "run", "python", "timeout", "continue_on_error", "env", "description"}


@dataclass(frozen=True)
class StepDef:
    name: str
    kind: str                  # "run" or "python"
    target: str                # the shell command, or "module:function"
    timeout: float | None
    continue_on_error: bool
    env: tuple                 # ((key, value), ...)

    def json(self):
        return {"name": self.name, "kind": self.kind, "command": self.target,
                "timeout": self.timeout, "continue_on_error": self.continue_on_error}


@dataclass(frozen=True)
class Definition:
    name: str
    description: str
    steps: tuple
    path: str
    schedule: str | None = None    # a 5-field cron expression
    timezone: str = "UTC"
    overlap: str = "skip"          # skip | queue

    def json(self, now=None):
        out = {"name": self.name, "description": self.description,
               "file": os.path.basename(self.path), "steps": [s.json() for s in self.steps],
               "schedule": self.schedule, "next_run_at": None}
        if self.schedule:
            from ..models import iso, utcnow
            from .cron import next_tick
            out.update(timezone=self.timezone, overlap=self.overlap,
                       next_run_at=iso(next_tick(self.schedule, self.timezone, now or utcnow())))
        return out


class DefinitionError(Exception):
    pass


def parse_definition(path):
    """A :class:`Definition` from one TOML file, or :class:`DefinitionError` saying what is
    wrong with it (the caller names the file)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise DefinitionError("not valid TOML: the file is not UTF-8") from None
    except OSError as exc:
        raise DefinitionError(f"cannot be read: {exc.strerror}") from None
    unknown = sorted(set(data) - DEF_KEYS)
    if unknown:
        raise DefinitionError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)} (allowed: {', '.join(sorted(DEF_KEYS))})")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = data.get("name", stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DefinitionError(f"name must be a string of letters, digits, '.', '_' or '-' "
                              f"(got {name!r})")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise DefinitionError("description must be a string")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise DefinitionError("no steps: add at least one [[steps]] table with a name and "
                              "run = \"<command>\" or python = \"module:function\"")
    if len(steps) > 500:
        raise DefinitionError("at most 500 steps")
    out, seen = [], set()
    for i, raw in enumerate(steps, 1):
        out.append(_parse_step(raw, i, seen))
    return Definition(name, description, tuple(out), os.path.abspath(path),
                      *_parse_schedule(data))


def _parse_schedule(data):
    """``(schedule, timezone, overlap)`` of a definition's table."""
    from .cron import schedule_problem
    schedule = data.get("schedule")
    timezone = data.get("timezone", "UTC")
    overlap = data.get("overlap", "skip")
    if schedule is None:
        if "timezone" in data or "overlap" in data:
            raise DefinitionError("timezone and overlap go with a schedule")
        return None, "UTC", "skip"
    if not isinstance(schedule, str):
        raise DefinitionError("schedule must be a cron expression string, like \"*/15 * * * *\"")
    if not isinstance(timezone, str):
        raise DefinitionError("timezone must be a string, like \"Europe/Paris\"")
    problem = schedule_problem(schedule, timezone)
    if problem:
        raise DefinitionError(problem)
    if overlap not in ("skip", "queue"):
        raise DefinitionError("overlap must be \"skip\" or \"queue\"")
    return " ".join(schedule.split()), timezone, overlap


def _parse_step(raw, i, seen):
    where = f"step {i}"
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where} must be a table ([[steps]])")
    name = raw.get("name")
    if isinstance(name, str):
        where = f"step {i} ({name!r})"
    unknown = sorted(set(raw) - STEP_KEYS)
    if unknown:
        raise DefinitionError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)} (allowed: {', '.join(sorted(STEP_KEYS))})")
    if isinstance(name, str) and "/" in name:
        raise DefinitionError(f"{where}: step names cannot contain '/'")
    if not isinstance(name, str) or not STEP_NAME_RE.match(name):
        raise DefinitionError(f"{where}: name is required, a string of 1 to 200 characters "
                              "without '/' or control characters")
    if name in seen:
        raise DefinitionError(f"{where}: step names must be unique, {name!r} is used twice")
    seen.add(name)
    has_run, has_py = "run" in raw, "python" in raw
    if has_run == has_py:
        raise DefinitionError(f"{where}: give either run = \"<shell command>\" or "
                              f"python = \"module:function\"{', not both' if has_run else ''}")
    if has_run:
        kind, target = "run", raw["run"]
        if not isinstance(target, str) or not target.strip():
            raise DefinitionError(f"{where}: run must be a non-empty string (a shell command)")
    else:
        kind, target = "python", raw["python"]
        if not isinstance(target, str) or not TARGET_RE.match(target.strip()):
            raise DefinitionError(f"{where}: python must be \"module:function\" "
                                  f"(got {target!r})")
        target = target.strip()
    timeout = raw.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise DefinitionError(f"{where}: timeout must be a positive number of seconds")
        timeout = float(timeout)
    coe = raw.get("continue_on_error", False)
    if not isinstance(coe, bool):
        raise DefinitionError(f"{where}: continue_on_error must be true or false")
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and k and "=" not in k and "\x00" not in k
            and isinstance(v, (str, int, float)) and not isinstance(v, bool) for k, v in env.items()):
        raise DefinitionError(f"{where}: env must be a table of NAME = \"value\" strings")
    env = tuple((k, str(v)) for k, v in env.items())
    if any("\x00" in v for _, v in env):
        raise DefinitionError(f"{where}: env values cannot contain NUL")
    return StepDef(name, kind, target, timeout, coe, env)


def resolve_jobs_dir(configured):
    """An absolute jobs folder: relative to the working directory; the default ``jobs``
    falls back to the project's own ``jobs/`` when the working directory has none."""
    path = os.path.abspath(configured)
    if not os.path.isdir(path) and not os.path.isabs(configured) and configured == "jobs":
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.path.join(root, "jobs")
    return path


def toml_files(folder):
    """``(path, mtime_ns, size)`` of each ``*.toml`` file in ``folder``, by name: a
    folder's signature (it changed when this did); empty when it cannot be read."""
    try:
        entries = sorted((e for e in os.scandir(folder)
                          if e.name.endswith(".toml") and e.is_file()), key=lambda e: e.name)
    except OSError:
        return ()
    out = []
    for e in entries:
        try:
            st = e.stat()
        except OSError:
            continue
        out.append((e.path, st.st_mtime_ns, st.st_size))
    return tuple(out)


class DefinitionLibrary:
    """The definitions of one jobs folder, read again whenever a file changes."""

    def __init__(self, jobs_dir):
        self.jobs_dir = jobs_dir
        self._defs = {}
        self.errors = {}                  # file path -> problem
        self._signature = None
        self._reported = {}               # file path -> (signature, problem) already logged
        self._load()

    def _files(self):
        return toml_files(self.jobs_dir)

    def _load(self):
        """(Re)read the definition files when any changed; bad files are reported once."""
        files = self._files()
        if files == self._signature:
            return
        parsed, failed = {}, {}
        for path, _, _ in files:
            try:
                parsed[path] = parse_definition(path)
            except DefinitionError as exc:
                failed[path] = exc
        defs, errors = {}, {}
        # Two files, one name: the file named after the job wins, else the first by name.
        ranked = sorted(parsed.items(), key=lambda kv: (
            os.path.splitext(os.path.basename(kv[0]))[0] != kv[1].name, kv[0]))
        for path, d in ranked:
            if d.name in defs:
                failed[path] = DefinitionError(
                    f"defines job {d.name!r}, which {os.path.basename(defs[d.name].path)} "
                    "already defines")
            else:
                defs[d.name] = d
        for path, mtime, size in files:
            if path in failed:
                exc = failed[path]
                errors[path] = str(exc)
                if self._reported.get(path) != ((mtime, size), str(exc)):
                    self._reported[path] = ((mtime, size), str(exc))
                    log.error("job definition %s was not loaded: %s", path, exc)
        self._defs, self.errors, self._signature = defs, errors, files

    def all(self):
        self._load()
        return dict(self._defs)

    def get(self, name):
        self._load()
        d = self._defs.get(name)
        if d is not None:
            return d
        for path, problem in self.errors.items():
            if os.path.splitext(os.path.basename(path))[0] == name:
                raise DefinitionInvalid(f"job definition {name!r} ({path}) is invalid: {problem}")
        raise DefinitionInvalid(f"no job definition named {name!r} in {self.jobs_dir}")

    def for_job(self, name, step_names, snapshot=None):
        """``(definition, None)`` for a job created from ``name`` with ``step_names`` (the
        ``snapshot`` taken when it was created, if any), or ``(None, why it cannot run)``."""
        d = snapshot or self.all().get(name)
        if d is None:
            return None, f"job definition {name!r} is no longer available"
        if [s.name for s in d.steps] != step_names:
            return None, (f"job definition {name!r} changed since the job was created "
                          "(its steps differ); start it again")
        return d, None

    def json(self):
        """Every definition file: the loaded ones, and those that do not load with their
        ``error`` (they cannot be started), by name."""
        listed = [d.json() for d in self.all().values()]
        listed += [{"name": os.path.splitext(os.path.basename(path))[0], "description": "",
                    "file": os.path.basename(path), "steps": [], "schedule": None,
                    "next_run_at": None, "error": problem}
                   for path, problem in self.errors.items()]
        return sorted(listed, key=lambda d: (d["name"], d["file"]))
