"""Who may use Quaero, decided here for every route, however the server is started (the
pure rules, scopes and patterns are in ``quaero/access.py``; keys and sessions are kept by
``quaero/keystore.py``).

- Without ``QUAERO_API_TOKEN`` (nor OpenID Connect sign-in) Quaero is open, so it answers loopback clients only
  (``check_loopback``): the peer address, every address a proxy names in
  ``X-Forwarded-For``, and the ``Host`` name must be loopback. The ``Host`` test stops DNS
  rebinding: a page on another site whose name was made to resolve to 127.0.0.1 still
  sends its own name as ``Host``. This does not rely on gunicorn.conf.py. Such a client
  may do everything, unless it sends an API key: a key is never more than its scopes.
- With a token, or with ``QUAERO_OIDC_ISSUER`` (people sign in, ``web/oidc.py``): every
  route needs what ``access.route_need`` says, from a caller (:func:`principal`):
  ``Authorization: Bearer <token or key>`` (the scheme in any case), or the session
  cookie set by ``/login`` or the OpenID Connect callback (a server-side session:
  signing out ends it for every copy of the cookie). ``/api`` answers 401 without valid credentials and 403 naming
  the missing scope (or the job pattern) with them, on the headers, before the body is
  read; the pages send a stranger to ``/login``. ``/metrics`` needs
  ``QUAERO_METRICS_TOKEN`` or the API token as a Bearer token when either is set.
  ``/healthz`` stays open (docs/deploy.md).
- CSRF: state-changing ``/api`` calls made with the session cookie carry the session's
  CSRF token (``X-CSRF-Token``); cross-site ones are refused even without a token.
- Runs, cancels, reruns, deletes, key changes and sign-ins and -outs are written to the
  audit trail (:func:`audit`): service-log lines with source ``audit``.

The cookie is signed with ``QUAERO_SECRET_KEY``. When it is not set and a token is (else
the OpenID client's secret), the key is derived from it, so that the cookie works across
workers and restarts (changing it logs everyone out). Set ``QUAERO_SECRET_KEY`` in
production. The cookie is HttpOnly, SameSite=Lax, and Secure over https
(:class:`SessionCookies`).
"""
import hashlib
import hmac
import ipaddress
import secrets
from functools import lru_cache
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import current_app, g, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface

from .. import access, keystore
from ..access import ADMIN, PUBLIC
from ..errors import AuthRequired, Forbidden, Invalid, Refused
from ..models import jobs_t, utcnow
from ..servicelog import audit as audit_line

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
API_PREFIXES = ("/api/", "/v1/", "/loki/")  # the JSON API, OTLP/HTTP and the Loki push API
CSRF_KEY = "csrf_token"
SESSION_KEY = "sid"  # in the signed cookie: the session's secret (its hash names the row)
# the reads of lines that a key limited to some jobs must aim at them (job_id=...)
LINE_READS = frozenset(("/api/logs", "/api/logs/facets", "/api/logs/histogram",
                        "/api/logs/stream", "/api/search"))


# --- tokens ----------------------------------------------------------------------------

def api_token():
    return current_app.config.get("QUAERO_API_TOKEN") or None


def oidc_settings():
    """The OpenID Connect sign-in's settings (``config.oidc_settings``), or None."""
    return current_app.config.get("OIDC")


def auth_required():
    """Callers must say who they are: a token is configured, or people sign in with
    OpenID Connect (a server for a team, not only for this host)."""
    return api_token() is not None or oidc_settings() is not None


def same_secret(given, expected):
    """Constant-time comparison of a secret given by a client."""
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def bearer():
    """The token of an ``Authorization: Bearer <token>`` header (any case of the
    scheme), or None."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def _engine():
    return current_app.extensions["quaero"].engine


def principal():
    """Who is asking (``access.Principal``), or None: a Bearer token or key (which alone
    decides when sent), else the login session, else (no token configured) the loopback
    client. :class:`AuthRequired` for a Bearer credential that is wrong, revoked or
    expired. Once per request (``g``)."""
    if "principal" not in g:
        g.principal = _resolve()
    return g.principal


def _resolve():
    given = bearer()
    token = api_token()
    if given is not None:
        if token is not None and same_secret(given, token):
            return access.token_principal()
        try:
            found = keystore.key_principal(_engine(), given, utcnow())
        except keystore.KeyRefused as exc:
            raise AuthRequired(f"authentication required: {exc}") from None
        if found is not None:
            return found
        if auth_required() or access.key_id_of(given) is not None:
            raise AuthRequired()
        # nothing configured: a Bearer value that is no key of ours is ignored, as before
    if not auth_required():
        return access.local_principal()
    secret = session.get(SESSION_KEY)
    if secret is None:
        return None
    return keystore.session_principal(_engine(), secret, utcnow())


def authenticated():
    """A page may be shown to someone: no token is configured, or a caller is known."""
    return principal() is not None


def require_token():
    """A caller, where a token is configured (401 otherwise)."""
    if principal() is None:
        raise AuthRequired()


def require(scope):
    """403 unless the caller has ``scope`` (``admin`` has every scope)."""
    who = principal()
    if who is None:
        raise AuthRequired()
    if not who.meets(scope):
        raise Forbidden(access.missing_scope_message(who, scope))


def require_job(name, definition=None):
    """403 when the caller's key is limited to jobs whose name does not match this one's."""
    who = principal()
    if who is not None and not who.may_job(name, definition):
        raise Forbidden(access.job_refusal(who, name))


def check_route(rule):
    """The route's need (``access.route_need``; unnamed routes need ``admin``) on the
    headers alone; then, for a key limited to some jobs, the jobs named in the path or
    the query."""
    need = access.route_need(request.method, rule.rule) or ADMIN
    if need == PUBLIC:
        return
    require(need)
    who = principal()
    if who.jobs is not None:
        _check_named_jobs(who, rule)


def _check_named_jobs(who, rule):
    ids = set(request.args.getlist("job_id"))
    if request.view_args and "job_id" in request.view_args:
        ids.add(request.view_args["job_id"])
    elif request.method == "GET" and access.rule_key(rule.rule) in LINE_READS and not ids:
        raise Forbidden(f"forbidden: {access.describe(who)} is limited to jobs matching "
                        f"{who.jobs!r}: name them with job_id")
    ids = [i for i in ids if i and len(i) <= 32]
    if not ids:
        return
    with _engine().connect() as conn:
        rows = conn.execute(sa.select(jobs_t.c.name, jobs_t.c.definition)
                            .where(jobs_t.c.id.in_(ids))).all()
    for name, definition in rows:   # (a job that does not exist is the route's 404)
        if not who.may_job(name, definition):
            raise Forbidden(access.job_refusal(who, name))


def check_line_targets(lines):
    """Lines about to be stored: a key limited to some jobs may send lines to those jobs
    only (not to the service log, nor to other jobs); a key limited to some sources, lines
    naming one of them only."""
    who = principal()
    if who is None:
        return
    if who.sources is not None:
        for line in lines:
            if not who.may_source(line.get("source")):
                raise Forbidden(f"forbidden: {access.describe(who)} may send lines only with "
                                f"source {', '.join(sorted(who.sources))}; a line has "
                                f"{line.get('source')!r}")
    if who.jobs is None:
        return
    ids = {line["job_id"] for line in lines}
    if None in ids:
        raise Forbidden(f"forbidden: {access.describe(who)} is limited to jobs matching "
                        f"{who.jobs!r}: every line needs a job_id")
    with _engine().connect() as conn:
        rows = conn.execute(sa.select(jobs_t.c.name, jobs_t.c.definition)
                            .where(jobs_t.c.id.in_([i for i in ids if len(i) <= 32]))).all()
    for name, definition in rows:
        if not who.may_job(name, definition):
            raise Forbidden(access.job_refusal(who, name))


def jobs_clause(dialect):
    """A condition on ``jobs`` for the caller's job pattern (lists show only those jobs),
    or None."""
    who = principal()
    if who is None or who.jobs is None:
        return None
    if dialect == "sqlite":  # SQLite's LIKE ignores case, its GLOB does not
        text = access.pattern_glob(who.jobs)
        return sa.or_(jobs_t.c.name.op("GLOB")(text), jobs_t.c.definition.op("GLOB")(text))
    text = access.pattern_like(who.jobs)
    return sa.or_(jobs_t.c.name.like(text, escape="\\"),
                  jobs_t.c.definition.like(text, escape="\\"))


def require_metrics_token():
    """``/metrics`` is open unless ``QUAERO_METRICS_TOKEN`` or the API token is set;
    then either one, as a Bearer token, is needed (a scraper has no session)."""
    tokens = [t for t in (current_app.config.get("QUAERO_METRICS_TOKEN"), api_token()) if t]
    given = bearer()
    if tokens and not (given is not None and any(same_secret(given, t) for t in tokens)):
        raise AuthRequired()


# --- the audit trail -----------------------------------------------------------------

def actor():
    """Who the audit trail names for this request: a key's name, ``token``, a person,
    ``local`` (loopback without a token)."""
    who = principal()
    if who is None:
        return "anonymous"
    if who.kind == "key":
        return f"key {who.name} ({who.key_id})"
    return who.name


def audit(action, text, who=None, **fields):
    """An audit line for what this request did (``who``: another actor's name)."""
    audit_line(current_app.extensions["quaero"].ingestor, who or actor(), action, text,
               **fields)


# --- sessions ------------------------------------------------------------------------

def sign_in(subject, role, **fields):
    """Start a server-side session for ``subject`` (``token``, or a person) with ``role``
    (``access.ROLES``): a fresh cookie (no fixation) holding the session's secret and a
    new CSRF token. The OpenID Connect sign-in calls this too (``fields``: more for the
    audit line)."""
    now = utcnow()
    secret = keystore.start_session(_engine(), subject, role,
                                    current_app.permanent_session_lifetime, now)
    session.clear()
    session[SESSION_KEY] = secret
    session.permanent = True
    csrf_token()
    g.pop("principal", None)
    audit("sign-in", f"signed in (role {role})", who=subject, role=role, **fields)


def sign_out():
    """End this browser's session on the server (a copy of the cookie stops working)."""
    who = principal() if SESSION_KEY in session else None
    if who is not None and who.kind == "session":
        keystore.end_session(_engine(), who.session_id, utcnow())
        audit("sign-out", "signed out", who=who.name)
    session.clear()
    g.pop("principal", None)


def client_address():
    """The client's address for counting sign-in failures: the peer, or, behind a proxy on
    this host (a loopback peer), the last address the proxy added to ``X-Forwarded-For``."""
    peer = request.remote_addr or "local"
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded and is_loopback_address(peer):
        return forwarded.split(",")[-1].strip()[:64] or peer
    return peer


# --- loopback only without a token -----------------------------------------------------

@lru_cache(maxsize=1024)  # asked for every request's peer and Host: a handful of values
def is_loopback_address(text):
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@lru_cache(maxsize=1024)
def is_loopback_host(host):
    """``localhost``, ``127.x.y.z`` or ``[::1]``, with or without a port."""
    host = host.strip().lower()
    if host.startswith("["):
        name, closed, port = host[1:].partition("]")
        if not closed or (port and not (port[0] == ":" and port[1:].isdigit())):
            return False
    else:
        name, colon, port = host.partition(":")
        if colon and not port.isdigit():
            return False
    return name == "localhost" or is_loopback_address(name)


def loopback_refusal():
    """Why this request is refused when Quaero runs without a token, or None."""
    peer = request.remote_addr or ""
    # An empty peer is a unix socket: only local processes can reach it.
    if peer and not is_loopback_address(peer):
        return f"from {peer}"
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded is not None:
        for hop in forwarded.split(","):
            if not is_loopback_address(hop):
                return f"forwarded for {hop.strip()[:64]!r}"
    host = request.headers.get("Host")
    # Browsers (the only clients DNS rebinding can steer) always send Host.
    if host is not None and not is_loopback_host(host):
        return f"for host {host[:64]!r}"
    return None


def check_loopback():
    """``before_request`` of the whole app: without a token, loopback clients only."""
    if auth_required():
        return
    why = loopback_refusal()
    if why is not None:
        raise Refused(f"refused: a request {why}. Without QUAERO_API_TOKEN, Quaero "
                      "answers loopback clients only (address and Host name "
                      "localhost, 127.x or [::1]); set QUAERO_API_TOKEN to serve others")


# --- CSRF ------------------------------------------------------------------------------

def csrf_token():
    """This session's CSRF token (created on first use)."""
    token = session.get(CSRF_KEY)
    if not token:
        token = session[CSRF_KEY] = secrets.token_urlsafe(32)
    return token


def csrf_valid(value):
    expected = session.get(CSRF_KEY)
    return bool(expected and value) and hmac.compare_digest(str(value).encode(), expected.encode())


def _same_origin():
    """False when the browser says the request comes from another origin."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True          # not a browser (curl, a producer), or an old one
    parts = urlsplit(origin)
    return origin != "null" and parts.netloc == request.host


def check_api_csrf():
    """``before_request`` for ``/api``: a state-changing call that relies on the session
    cookie must carry the session's CSRF token; one from another site is refused even
    without a token configured (any web page could otherwise post to a loopback Quaero).
    Bearer-token clients and clients without cookies (curl, log producers) are not affected."""
    if request.method in SAFE_METHODS or not request.path.startswith(API_PREFIXES):
        return
    who = principal()
    if who is not None and who.kind in ("token", "key"):  # sent as a header, never by a page
        return
    if not _same_origin():
        raise Refused("cross-site request refused")
    if who is not None and who.kind == "session" and not csrf_valid(
            request.headers.get("X-CSRF-Token")):
        raise Refused("missing or invalid CSRF token")


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, ``Secure`` whenever the request came over https (directly, or
    through a proxy on this host that says so: gunicorn trusts ``X-Forwarded-Proto`` from
    loopback peers) or ``QUAERO_PUBLIC_URL`` is an https address: the browser then never
    sends it in the clear. Over plain http (a loopback server) it could not be Secure."""

    def get_cookie_secure(self, app):
        if app.config.get("SESSION_COOKIE_SECURE"):
            return True
        if (app.config.get("QUAERO_PUBLIC_URL") or "").lower().startswith("https://"):
            return True
        return has_request_context() and request.is_secure


def init_app(app):
    """The loopback rule and CSRF check for every request; the session cookie's settings
    (HttpOnly, SameSite=Lax, Secure over https)."""
    oidc = app.config.get("OIDC")
    seed = app.config.get("QUAERO_API_TOKEN") or (oidc and oidc["client_secret"])
    if not app.config.get("QUAERO_SECRET_KEY") and seed:
        # Stable across workers and restarts; rotating the token (or, without one, the
        # OpenID client's secret) logs everyone out.
        app.secret_key = hmac.new(seed.encode(), b"quaero session signing key",
                                  hashlib.sha256).hexdigest()
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.session_interface = SessionCookies()
    app.before_request(check_request)


def check_request():
    """The one ``before_request`` of these rules (one hook, not three: Flask's dispatch of
    each hook cost more than the rule): the loopback rule, then on ``/api``, ``/v1`` and
    ``/loki`` a caller (401), the CSRF check, and the route's scope (403), in that order,
    all on the headers. The pages ask in ``views.require_login``. Last, an API URL with a
    NUL (``%00``) is a 400: no name, id or filter holds one, and PostgreSQL refuses the
    character in a query's text (it was a 500 for ``step=`` and ``job_id=``)."""
    check_loopback()
    if request.path.startswith(API_PREFIXES):
        require_token()
        check_api_csrf()
        if request.url_rule is not None:   # else a 404 or 405 follows
            check_route(request.url_rule)
        if b"%00" in request.query_string or "\x00" in request.path:
            raise Invalid("the URL holds a NUL character (%00)")
