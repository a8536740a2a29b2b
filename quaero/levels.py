"""The four levels and how a line of program output names its own, in a module that imports
nothing of the server: the client side (``quaero.client``, ``exec``/``pipe``, the CLI) uses
it without Flask, SQLAlchemy or gevent.

``line_level`` reads a level word at a line's start (``ERROR: x``, ``[debug] x``,
``WARNING x``, ``<warn>``), colour codes around the word aside (``\\x1b[31mERROR:``).
``exit_detail`` says how a program ended, in the words of the error line the job runner and
``exec``/``pipe`` both write when a command fails."""
import re
import signal

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
LEVEL_NAMES = {v: k for k, v in LEVELS.items()}
NAMES = tuple(LEVELS)            # lowest first
DEBUG, INFO, WARN, ERROR = LEVELS.values()

# level words, any case: the usual logging libraries', syslog's, OpenTelemetry's severity
# texts and Loki's detected_level values (the one vocabulary: OTLP, Loki, exec/pipe)
_LEVEL_WORDS = {"trace": DEBUG, "debug": DEBUG, "dbg": DEBUG, "dbug": DEBUG, "info": INFO,
                "information": INFO, "informational": INFO, "notice": INFO,
                "warn": WARN, "warning": WARN, "error": ERROR, "err": ERROR, "eror": ERROR,
                "fatal": ERROR, "critical": ERROR, "crit": ERROR, "panic": ERROR,
                "alert": ERROR, "emerg": ERROR, "emergency": ERROR}
_LEVEL_RE = re.compile(r"[ \t]{0,8}(?:\[[ \t]*([A-Za-z]{3,8})[ \t]*\]|<([A-Za-z]{3,8})>"
                       r"|([A-Za-z]{3,8})[ \t]*:|([A-Z]{3,8})(?=[ \t]|\Z))")
_SGR_RE = re.compile(r"\x1b\[[0-9;]*m")   # ANSI colours and styles (Select Graphic Rendition)


def line_level(text, default):
    """The level (a number of ``LEVELS``) a line names at its start, else ``default``."""
    if "\x1b" in text:
        text = _SGR_RE.sub("", text[:200])
    m = _LEVEL_RE.match(text)
    if m is None:
        return default
    word = m.group(1) or m.group(2) or m.group(3) or m.group(4)
    return _LEVEL_WORDS.get(word.lower(), default)


def word_level(word, default):
    """The level a word names (``WARNING``, ``err``, ``Fatal``...), else ``default``."""
    return _LEVEL_WORDS.get(word.strip().lower(), default)


def word_level_name(word):
    """The level name a word names, else ``info``."""
    return LEVEL_NAMES[word_level(word, INFO)]


def exit_detail(code):
    """What a non-zero exit status says (a negative one: the signal that killed it)."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"
