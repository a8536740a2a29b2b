"""The browser pages: home, queue, a job's log; login/logout; CSRF protection.

Pages need the session cookie when ``QUAERO_API_TOKEN`` is set: ``/login`` takes the
token (compared in constant time) and marks the session authenticated; ``/api`` accepts
that cookie (``api.token_ok``). State-changing requests made with the cookie need the
session's CSRF token (a hidden field in forms, the ``X-CSRF-Token`` header in the pages'
``fetch`` calls); Bearer-token clients are not affected.

The session is signed with ``QUAERO_SECRET_KEY``. When it is not set and a token is,
the key is derived from the token, so that the cookie works across workers and
restarts (changing the token logs everyone out). Set ``QUAERO_SECRET_KEY`` in production.
"""
import hashlib
import hmac
import os
import secrets
import time
from urllib.parse import urlsplit

from flask import (Blueprint, abort, current_app, redirect, render_template, request, session,
                   url_for)

from .errors import APIError
from .models import Job, db, job_dict, level_counts

bp = Blueprint("views", __name__)

ALPINE_VERSION = "3.17.5"
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
CSRF_KEY = "csrf_token"
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self'; "
       "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


# --- auth and CSRF ---------------------------------------------------------------------

def auth_required():
    return bool(current_app.config.get("QUAERO_API_TOKEN"))


def authenticated():
    return not auth_required() or session.get("authenticated") is True


def csrf_token():
    """This session's CSRF token (created on first use)."""
    token = session.get(CSRF_KEY)
    if not token:
        token = session[CSRF_KEY] = secrets.token_urlsafe(32)
    return token


def csrf_valid(value):
    expected = session.get(CSRF_KEY)
    return bool(expected and value) and hmac.compare_digest(str(value).encode(), expected.encode())


def _bearer_ok():
    token = current_app.config.get("QUAERO_API_TOKEN")
    header = request.headers.get("Authorization", "")
    return bool(token) and header.startswith("Bearer ") and hmac.compare_digest(
        header[7:].strip().encode(), token.encode())


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
    without a token configured (Quaero is then open on loopback, and any web page could
    otherwise post to it). Bearer-token clients and clients without cookies (curl, log
    producers) are not affected."""
    if request.method in SAFE_METHODS or not request.path.startswith("/api/"):
        return None
    if _bearer_ok():
        return None
    if not _same_origin():
        raise APIError(403, "cross-site request refused")
    if session.get("authenticated") is True and not csrf_valid(request.headers.get("X-CSRF-Token")):
        raise APIError(403, "missing or invalid CSRF token")
    return None


def _safe_next(target):
    """Only a local path: never an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("views.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("views.index")
    return target


@bp.before_request
def require_login():
    if request.endpoint in ("views.login", "views.logout") or authenticated():
        return None
    nxt = request.full_path if request.query_string else request.path
    return redirect(url_for("views.login", next=nxt))


@bp.after_request
def page_headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if response.mimetype == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.app_context_processor
def template_globals():
    return {"csrf_token": csrf_token, "auth_required": auth_required(),
            "alpine_src": url_for("static", filename=f"vendor/alpinejs-{ALPINE_VERSION}/alpine.min.js"),
            "static_version": _static_version()}


def _static_version():
    """A cache-buster for our assets: their newest modification time."""
    state = current_app.extensions.setdefault("quaero_views", {})
    if "static_version" not in state:
        folder = os.path.join(current_app.static_folder, "js")
        try:
            state["static_version"] = str(int(max(
                os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder))))
        except (OSError, ValueError):
            state["static_version"] = "0"
    return state["static_version"]


@bp.route("/login", methods=["GET", "POST"])
def login():
    nxt = _safe_next(request.values.get("next"))
    if not auth_required():
        return redirect(nxt)
    error = None
    status = 200
    if request.method == "POST":
        if not csrf_valid(request.form.get("csrf_token")):
            error, status = "Your session expired; please try again.", 400
        else:
            given = request.form.get("token", "")
            token = current_app.config["QUAERO_API_TOKEN"]
            if hmac.compare_digest(given.strip().encode(), token.encode()):
                session.clear()              # a fresh session: no fixation
                session["authenticated"] = True
                session.permanent = True
                csrf_token()
                return redirect(nxt)
            time.sleep(0.5)              # a guess costs time (gevent: nothing else waits)
            error, status = "That token is not valid.", 401
    return render_template("login.html", error=error, next=nxt), status


@bp.post("/logout")
def logout():
    if session.get("authenticated") is True and not csrf_valid(request.form.get("csrf_token")):
        abort(400)
    session.clear()
    return redirect(url_for("views.login") if auth_required() else url_for("views.index"))


# --- pages -----------------------------------------------------------------------------

@bp.get("/")
def index():
    return render_template("index.html", page="home")


@bp.get("/queue")
def queue():
    return render_template("queue.html", page="queue")


@bp.get("/jobs/<job_id>")
def job(job_id):
    found = db.session.get(Job, job_id) if len(job_id) <= 64 else None
    if found is None:
        db.session.rollback()
        return render_template("not_found.html", page="job", job_id=job_id), 404
    data = job_dict(found, level_counts(db.session.connection(), [found.id])[found.id])
    db.session.rollback()   # never hold a read transaction open
    return render_template("job.html", page="job", job=data)


def init_app(app):
    """Register the pages and the CSRF check on ``/api``."""
    if not os.environ.get("QUAERO_SECRET_KEY") and app.config.get("QUAERO_API_TOKEN"):
        # Stable across workers and restarts; rotating the token logs everyone out.
        app.secret_key = hmac.new(app.config["QUAERO_API_TOKEN"].encode(),
                                  b"quaero session signing key", hashlib.sha256).hexdigest()
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.before_request(check_api_csrf)
    app.register_blueprint(bp)
