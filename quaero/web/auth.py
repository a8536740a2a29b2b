"""Who may use Quaero, decided here for every route, however the server is started.

- Without ``QUAERO_API_TOKEN`` Quaero is open, so it answers loopback clients only
  (``check_loopback``): the peer address, every address a proxy names in
  ``X-Forwarded-For``, and the ``Host`` name must be loopback. The ``Host`` test stops DNS
  rebinding: a page on another site whose name was made to resolve to 127.0.0.1 still
  sends its own name as ``Host``. This does not rely on gunicorn.conf.py.
- With a token: ``/api`` needs ``Authorization: Bearer <token>`` (the scheme in any case)
  or the session cookie set by ``/login``; the pages need the session
  (``views.require_login``); ``/metrics`` needs ``QUAERO_METRICS_TOKEN`` or the API token
  as a Bearer token when either is set. ``/healthz`` stays open (docs/deploy.md).
- CSRF: state-changing ``/api`` calls made with the session cookie carry the session's
  CSRF token (``X-CSRF-Token``); cross-site ones are refused even without a token.

The session is signed with ``QUAERO_SECRET_KEY``. When it is not set and a token is,
the key is derived from the token, so that the cookie works across workers and
restarts (changing the token logs everyone out). Set ``QUAERO_SECRET_KEY`` in production.
"""
import hashlib
import hmac
import ipaddress
import secrets
from functools import lru_cache
from urllib.parse import urlsplit

from flask import current_app, request, session

from ..errors import AuthRequired, Refused

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
API_PREFIXES = ("/api/", "/v1/", "/loki/")  # the JSON API, OTLP/HTTP and the Loki push API
CSRF_KEY = "csrf_token"


# --- tokens ----------------------------------------------------------------------------

def api_token():
    return current_app.config.get("QUAERO_API_TOKEN") or None


def auth_required():
    return api_token() is not None


def same_secret(given, expected):
    """Constant-time comparison of a secret given by a client."""
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def bearer():
    """The token of an ``Authorization: Bearer <token>`` header (any case of the
    scheme), or None."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def bearer_ok():
    token, given = api_token(), bearer()
    return token is not None and given is not None and same_secret(given, token)


def authenticated():
    """A page may be shown: no token is configured, or the session logged in."""
    return not auth_required() or session.get("authenticated") is True


def token_ok():
    return authenticated() or bearer_ok()


def require_token():
    """The token (or the login session) where one is configured."""
    if not token_ok():
        raise AuthRequired()


def check_api_token():
    """``before_request`` of the whole app: every ``/api`` and ``/v1`` (OTLP) path needs
    the token."""
    if request.path.startswith(API_PREFIXES):
        require_token()


def require_metrics_token():
    """``/metrics`` is open unless ``QUAERO_METRICS_TOKEN`` or the API token is set;
    then either one, as a Bearer token, is needed (a scraper has no session)."""
    tokens = [t for t in (current_app.config.get("QUAERO_METRICS_TOKEN"), api_token()) if t]
    given = bearer()
    if tokens and not (given is not None and any(same_secret(given, t) for t in tokens)):
        raise AuthRequired()


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
    if bearer_ok():
        return
    if not _same_origin():
        raise Refused("cross-site request refused")
    if session.get("authenticated") is True and not csrf_valid(request.headers.get("X-CSRF-Token")):
        raise Refused("missing or invalid CSRF token")


def init_app(app):
    """The loopback rule and CSRF check for every request; the session cookie's settings."""
    if not app.config.get("QUAERO_SECRET_KEY") and app.config.get("QUAERO_API_TOKEN"):
        # Stable across workers and restarts; rotating the token logs everyone out.
        app.secret_key = hmac.new(app.config["QUAERO_API_TOKEN"].encode(),
                                  b"quaero session signing key", hashlib.sha256).hexdigest()
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.before_request(check_request)


def check_request():
    """The one ``before_request`` of these rules (one hook, not three: Flask's dispatch of
    each hook cost more than the rule): the loopback rule, then the token and the CSRF
    check on ``/api`` and ``/v1``, in that order."""
    check_loopback()
    if request.path.startswith(API_PREFIXES):
        require_token()
        check_api_csrf()
