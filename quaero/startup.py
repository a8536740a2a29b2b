"""What the server checks as it starts, each problem said in one line on stderr: a port
that is taken, a database that cannot be reached or used, a worker class that cannot
stream; and Quaero's own warnings and errors on stderr too, where a service manager
(journald, docker logs) looks, not only in its service log.

Light to import: ``python app.py``, ``quaero serve`` and gunicorn's master use it before
any worker exists. The database is tried in a child process (:func:`check_database`): the
master must not import psycopg before its workers patch sockets for gevent (psycopg
chooses how it waits for the network when it is imported)."""
import errno
import logging
import os
import select
import socket
import sys
import time

CONNECT_SECONDS = 3.0  # a database that has not answered by then fails the start
IMPORT_SECONDS = 30.0  # the check's child must be ready to connect by then
# set by python app.py and quaero serve once they checked: gunicorn's master does not again
CHECKED = "_QUAERO_STARTUP_CHECKED"
STDERR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
STDERR_DATEFMT = "%Y-%m-%d %H:%M:%S %z"  # gunicorn's own lines look the same


# -- Quaero's warnings and errors on stderr -------------------------------------------------

class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test's capture, a
    daemon's redirection), in gunicorn's format."""

    def __init__(self, level=logging.WARNING):
        super().__init__(level)
        self.setFormatter(logging.Formatter(STDERR_FORMAT, STDERR_DATEFMT))

    def emit(self, record):
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _writes_stderr(handler):
    if isinstance(handler, StderrHandler):
        return True
    if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    flask_logging = sys.modules.get("flask.logging")  # Flask's default handler: stderr too
    return (handler.stream in (sys.stderr, sys.__stderr__)
            or (flask_logging is not None and handler is flask_logging.default_handler))


def log_to_stderr(name="quaero", level=logging.WARNING):
    """The ``name`` logger's records at ``level`` and above also on stderr, once per
    process, unless a handler of it or of an ancestor already writes them there. Only
    Quaero's logger: gunicorn's own (``gunicorn.error``) writes its lines itself."""
    logger = logging.getLogger(name)
    node = logger
    while node is not None:
        if any(_writes_stderr(h) for h in node.handlers):
            return None
        node = node.parent if node.propagate else None
    handler = StderrHandler(level)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return handler


# -- the worker class ------------------------------------------------------------------------

def gunicorn_worker_class():
    """The worker class of the gunicorn loading the app (in a worker, or in the master
    with ``--preload``), or None when no gunicorn is."""
    if "gunicorn.arbiter" not in sys.modules:
        return None
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Worker):
            return type(owner)
        if isinstance(owner, Arbiter):
            return owner.worker_class
        frame = frame.f_back
    return None


def cannot_stream(worker_class):
    """One line when gunicorn's ``worker_class`` cannot hold streams, else None."""
    if worker_class is None:
        return None
    if any(cls.__module__ == "gunicorn.workers.ggevent" for cls in worker_class.__mro__):
        return None
    return (f"gunicorn's {worker_class.__name__} ({worker_class.__module__}) cannot hold "
            "streams: every stream is refused (200, a retry: and why). Run gunicorn with "
            "-k gevent: its -c gunicorn.conf.py sets it, as python app.py and quaero serve do")


def warn_if_cannot_stream():
    problem = cannot_stream(gunicorn_worker_class())
    if problem:
        logging.getLogger("quaero.startup").warning(problem)
    return problem


# -- the port --------------------------------------------------------------------------------

def port_problem(address):
    """One line when this process could not listen on ``address`` (host, port), else None."""
    if not isinstance(address, tuple):
        return None  # a unix socket or a file descriptor: gunicorn's business
    host, port = address[0], address[1]
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return (f"cannot listen on {host}:{port}: {exc.strerror}; set QUAERO_HOST "
                "(quaero serve --host) to an address of this machine")
    family, kind, proto, _, sockaddr = infos[0]
    s = socket.socket(family, kind, proto)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        s.bind(sockaddr)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            return (f"cannot listen on {where}: the port is in use (another server?); set "
                    "QUAERO_PORT (quaero serve --port) to a free port, or stop the other")
        if exc.errno == errno.EACCES:
            return (f"cannot listen on {where}: ports below 1024 need privileges; set "
                    "QUAERO_PORT (quaero serve --port) to 1024 or above, and put nginx "
                    "in front (docs/deploy.md)")
        return (f"cannot listen on {where}: {exc.strerror}; check QUAERO_HOST and "
                "QUAERO_PORT (quaero serve --host/--port)")
    finally:
        s.close()
    return None


# -- the database ----------------------------------------------------------------------------

def _connect_args(url):
    if url.startswith("postgresql"):
        return {"connect_timeout": max(2, int(CONNECT_SECONDS))}
    return {}


def _check_here(url, report):
    """In the child: say its imports are done (the connection's deadline starts there),
    connect, say so, bring the schema up to date, say so."""
    import sqlalchemy as sa
    report("I")
    try:
        engine = sa.create_engine(url, connect_args=_connect_args(url))
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any reason is the one line
        from .migrate import describe
        report("E" + describe(url, exc))
        return
    report("C")
    from .migrate import StartupError, describe, init_db
    try:
        init_db(engine)
    except StartupError as exc:
        report("E" + str(exc))
        return
    except Exception as exc:  # noqa: BLE001
        report("E" + describe(url, exc, "cannot bring up to date the database"))
        return
    finally:
        engine.dispose()
    report("O")


def check_database(url, seconds=CONNECT_SECONDS):
    """None, or one line saying why the database at ``url`` cannot be used: it does not
    answer within ``seconds``, refuses the connection (no such role, database, password),
    or its schema cannot be brought up to date (the migrations run here, once, before any
    worker starts; workers then find it up to date). Runs in a forked child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_end)

            def report(msg):
                os.write(write_end, (msg.replace("\n", " ") + "\n").encode())
            _check_here(url, report)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    # The child's imports are not the database's time: on a loaded machine they alone took
    # seconds, and a healthy database was reported silent. Its deadline starts after them.
    deadline = time.monotonic() + IMPORT_SECONDS
    buf, problem, imported, connected, done = b"", None, False, False, False
    try:
        while not done:
            wait = None if connected else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                from .bus import redact
                problem = (f"cannot connect to the database {redact(url)}: no answer within "
                           f"{seconds:g} s (is the host right? does a firewall drop the "
                           "connection?)" if imported else
                           f"cannot check the database {redact(url)}: the check did not "
                           f"start within {IMPORT_SECONDS:g} s (is the machine overloaded?)")
                break
            if not select.select([read_end], [], [], wait)[0]:
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:  # the child ended without a last word
                from .bus import redact
                problem = f"cannot check the database {redact(url)}: the check failed"
                break
            buf += chunk
            *lines, rest = buf.split(b"\n")
            buf = rest
            for line in lines:
                kind, text = line[:1], line[1:].decode(errors="replace")
                if kind == b"I":
                    imported, deadline = True, time.monotonic() + seconds
                connected = connected or kind in (b"C", b"O")
                if kind == b"E":
                    problem, done = text, True
                elif kind == b"O":
                    done = True
    finally:
        os.close(read_end)
        if not done:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
    return problem


def preflight(addresses, database_url):
    """Every problem that stops the start, one line each: the listening addresses first
    (instant), then the database (``database_url``; SQLite is not tried: its file is made
    on first use). None: what retention will keep is said on stderr (:func:`retention_line`)."""
    problems = [p for p in map(port_problem, addresses) if p]
    if not problems and database_url and not database_url.startswith("sqlite"):
        problem = check_database(database_url)
        if problem:
            problems.append(problem)
    if not problems:
        print(f"quaero: {retention_line()}", file=sys.stderr, flush=True)
    return problems


def _size(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def retention_line(env=None):
    """What the pruner keeps, in one line: the age, the size budget, the free-space floor
    and the archive, each with its setting (0 turns one off)."""
    from .config import environment, retention_settings
    days, max_bytes, min_free, archive = retention_settings(environment() if env is None else env)
    return "; ".join((
        f"retention: finished jobs and service lines older than {days:g} days go"
        if days else "retention by age: off",
        f"database size budget {_size(max_bytes)}" if max_bytes else "size budget: off",
        f"free-space floor {_size(min_free)}" if min_free else "free-space floor: off",
        f"archived to {archive} first" if archive else "not archived",
    )) + " (QUAERO_RETENTION_DAYS, QUAERO_MAX_DB_BYTES, QUAERO_MIN_FREE_BYTES, QUAERO_ARCHIVE_DIR)"


def preflight_or_exit(addresses, database_url):
    """:func:`preflight`; any problem: its line on stderr and exit status 1."""
    problems = preflight(addresses, database_url)
    if problems:
        for problem in problems:
            print(f"quaero: {problem}", file=sys.stderr, flush=True)
        sys.exit(1)
    os.environ[CHECKED] = "1"  # for the gunicorn exec'd next: checked already
