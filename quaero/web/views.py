"""The browser pages: home, queue, a job's log, search; login and logout.

Pages need the session cookie when ``QUAERO_API_TOKEN`` is set: ``/login`` takes the
token (compared in constant time) and marks the session authenticated. Tokens, the
session, CSRF and the loopback rule are in ``auth.py``.
"""
import os
import re
import time
from urllib.parse import urlsplit

from flask import (Blueprint, abort, current_app, redirect, render_template, request, session,
                   url_for)

from ..models import Job, db, job_dict
from ..queries import level_counts
from .auth import auth_required, authenticated, csrf_token, csrf_valid, same_secret

bp = Blueprint("views", __name__)

ALPINE_VERSION = "3.17.5"
# what a redirect target may hold: printable ASCII, no space or backslash (browsers drop
# tabs and newlines from URLs, so "/\t/evil.example" would become "//evil.example")
_NEXT_CHARS = re.compile(r"[!-\[\]-~]*\Z")
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self'; "
       "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


def _safe_next(target):
    """Only a local path, else ``/``: never an open redirect, never a header injection."""
    if (not target or not target.startswith("/") or target.startswith("//")
            or not _NEXT_CHARS.match(target)):
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
            "static_version": _static_version(),
            "trace_url": current_app.config.get("QUAERO_TRACE_URL")}


def _static_version():
    """A cache-buster for our assets: the newest modification time of the scripts and the
    stylesheet (a change to the stylesheet alone must reach browsers too)."""
    state = current_app.extensions.setdefault("quaero_views", {})
    if "static_version" not in state:
        folders = [os.path.join(current_app.static_folder, name) for name in ("js", "css")]
        try:
            state["static_version"] = str(int(max(
                os.path.getmtime(os.path.join(folder, f))
                for folder in folders for f in os.listdir(folder))))
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
            if same_secret(given, token):
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


@bp.get("/search")
def search():
    return render_template("search.html", page="search")


@bp.get("/jobs/<job_id>")
def job(job_id):
    found = db.session.get(Job, job_id) if len(job_id) <= 64 else None
    if found is None:
        db.session.rollback()
        return render_template("not_found.html", page="error", job_id=job_id), 404
    data = job_dict(found, level_counts(db.session.connection(), [found.id])[found.id])
    db.session.rollback()   # never hold a read transaction open
    return render_template("job.html", page="job", job=data)


@bp.get("/alerts")
def alerts():
    """Alert rules and destinations, their state, recent notifications and deliveries."""
    import json
    from ..alerts.store import recent_events
    from ..models import iso
    service = current_app.extensions["quaero"].alerts
    recent = []
    for event, deliveries in recent_events(service.engine, 20):
        payload = json.loads(event.payload)
        recent.append({"at": iso(event.created_at), "rule": event.rule, "state": event.state,
                       "summary": payload.get("summary"), "url": payload.get("url"),
                       "deliveries": [{"destination": d.destination, "status": d.status,
                                       "attempts": d.attempts, "last_error": d.last_error}
                                      for d in deliveries]})
    return render_template("alerts.html", page="alerts", alerts=service.status_json(),
                           recent=recent)


# --- errors ----------------------------------------------------------------------------

def error_page(exc):
    """An HTTP error a browser gets (an unknown address, a wrong method...) as a page in
    the site's layout. errors.py calls it for every path but the API's, which keeps its
    JSON errors."""
    if exc.code == 404:
        response = current_app.make_response(
            (render_template("not_found.html", page="error", path=request.path), 404))
    else:
        response = current_app.make_response((render_template(
            "error.html", page="error", code=exc.code, name=exc.name), exc.code))
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return page_headers(response)


@bp.record_once
def _register_error_page(state):
    state.app.extensions["quaero_error_page"] = error_page
