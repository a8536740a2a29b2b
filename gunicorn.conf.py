"""gunicorn settings for Quaero: gevent workers holding many long-lived streams."""
import ipaddress
import os

from quaero.config import ConfigError, export_file_settings

try:
    export_file_settings()  # QUAERO_CONFIG's settings, where the environment has none
except ConfigError as exc:
    raise SystemExit(f"quaero: {exc}") from None

_token = os.environ.get("QUAERO_API_TOKEN")
_oidc = os.environ.get("QUAERO_OIDC_ISSUER")   # people sign in: not open either
_host = os.environ.get("QUAERO_HOST", "127.0.0.1")
_port = os.environ.get("QUAERO_PORT", "5000")

bind = [f"{_host}:{_port}"]
worker_class = "gevent"                 # the sync worker cannot hold streams
workers = int(os.environ.get("QUAERO_WORKERS", "1"))
worker_connections = int(os.environ.get("QUAERO_WORKER_CONNECTIONS", "10000"))
timeout = 30              # worker heartbeat; async workers keep streams beyond it
graceful_timeout = 10     # streams are closed on shutdown; clients resume elsewhere
keepalive = 5
backlog = 4096
limit_request_line = 8190
accesslog = os.environ.get("QUAERO_ACCESS_LOG") or None
errorlog = "-"
control_socket_disable = True   # several Quaero servers may share a host (and a $HOME)
loglevel = os.environ.get("QUAERO_LOG_LEVEL", "info")

# /metrics speaks for the whole server, not for the worker that answered: prometheus-client
# keeps each worker's values in files here (set before the workers fork and import it), and
# /metrics adds them up (quaero/metrics.py). A directory of our own, fresh at every start.
_own_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile
    _own_metrics_dir = tempfile.mkdtemp(prefix="quaero-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir


def _loopback(addr):
    host = addr[0] if isinstance(addr, tuple) else None
    if host is None:  # a unix socket
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def on_starting(server):
    """Before gunicorn listens: a port that is taken or a database that cannot be used
    stops the start with one line naming it (QUAERO_PORT; the database's URL, password
    hidden, and the cause) instead of gunicorn's retries and a worker's tracebacks. The
    schema is brought up to date here, once, before any worker forks. ``python app.py``
    and ``quaero serve`` checked both before starting gunicorn."""
    from quaero.startup import CHECKED, preflight
    if os.environ.pop(CHECKED, None):
        return
    if os.environ.get("LISTEN_FDS") or os.environ.get("GUNICORN_FD") or server.cfg.reuse_port:
        addresses = []  # sockets handed over (systemd, a re-exec), or shared on purpose
    else:
        addresses = server.cfg.address
    problems = preflight(addresses, _database_url())
    if problems:
        on_exit(server)
        raise SystemExit("\n".join(f"quaero: {p}" for p in problems))


def _database_url():
    """QUAERO_DATABASE_URL (the environment, or QUAERO_CONFIG's file, exported above);
    unset: SQLite in the instance folder, which is not checked."""
    return os.environ.get("QUAERO_DATABASE_URL") or None


def post_worker_init(worker):
    """Start the worker's background work; size the stream cap to this worker's
    connections (a reserve stays free for /healthz, ingest and pages); and when the worker is told to stop, close its streams
    at once so that clients reconnect (to another worker) and resume, instead of waiting
    out graceful_timeout."""
    import gevent

    state = getattr(worker.wsgi, "extensions", {}).get("quaero")
    if state is not None:
        from quaero.streaming.pacing import stream_cap
        state.hub.max_streams = stream_cap(worker.cfg.worker_connections,
                                           worker.wsgi.config["QUAERO_MAX_STREAMS"])
        state.start()  # this worker's background work, before its first request

    def watch():
        while worker.alive:
            gevent.sleep(0.05)
        if state is not None:
            state.shutdown()

    gevent.spawn(watch)
    # What the worker holds once built (modules, the app, the ORM's tables: 120,000
    # objects) lives as long as it does: out of the collector's sight, a full collection
    # looks only at what requests made since. Ingest paid 2 us a line in collections
    # (4.5 with 5 attributes a line, bench/attributes.py), then 0.2 (1.2).
    # A request's lines (up to 10,000, a few containers each) live until it is answered:
    # with the default threshold (700 new containers) the young collection ran 4 to 6 times
    # in a 1,000-line batch and freed nothing. At 10,000 it did not run in one; what it
    # may hold back is at most 10,000 young containers.
    import gc
    gc.freeze()
    gc.set_threshold(10_000)


def pre_request(worker, req):
    """Let the app have a refused request's connection closed instead of its unread body
    drained (quaero.web.params.close_unread_body)."""
    if req.body is not None:
        req.body.quaero_request = req


def when_ready(server):
    """Without a token (or OpenID Connect sign-in) Quaero is open: refuse to listen beyond
    loopback."""
    if _token or _oidc:
        server.log.info("Quaero: %s; /api/* and the pages require a sign-in or a key",
                        "API token set" if _token else "OpenID Connect sign-in")
        return
    addrs = [listener.sock.getsockname() for listener in server.LISTENERS]
    if not all(_loopback(a) for a in addrs):
        server.log.error("Quaero: QUAERO_API_TOKEN is not set; refusing to listen on %s. "
                         "Set a token or bind to 127.0.0.1.", addrs)
        server.halt("no API token for a non-loopback address", exit_status=1)
    server.log.info("Quaero: no API token set; listening on loopback only (%s)", addrs)


def child_exit(server, worker):
    """A worker's live gauges (open streams) leave with it; its counters stay counted."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        import shutil
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
