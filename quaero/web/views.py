"""The browser pages: home, queue, a job's log, search, settings; login and logout.

Pages need a caller when ``QUAERO_API_TOKEN`` is set or people sign in with OpenID
Connect: ``/login`` offers the provider (``web/oidc.py``) and, with a token configured,
takes the token (compared in constant time; failures counted per client address and for
the account, 429 past the limit, ``access.py``); either starts a server-side session
(``auth.sign_in``); ``/logout`` ends it on the server (and at the provider, for a person
who came from there). A page needs the scope ``access.route_need`` names (``read``;
``/settings``: ``admin``) and shows only the actions the caller may take. Tokens,
sessions, CSRF and the loopback rule are in ``auth.py``.
"""
import os
import time

from flask import (Blueprint, abort, current_app, redirect, render_template, request, session,
                   url_for)

from .. import access, keystore
from ..access import OPERATE
from ..errors import Forbidden
from ..models import Job, db, job_dict, utcnow
from ..queries import level_counts
from . import oidc_client
from .auth import (SESSION_KEY, audit, auth_required, check_route, client_address, csrf_token,
                   csrf_valid, oidc_settings, principal, same_secret, sign_in, sign_out)
from .pages import page_headers, safe_next as _safe_next

bp = Blueprint("views", __name__)

ALPINE_VERSION = "3.17.5"


@bp.before_request
def require_login():
    """A stranger goes to ``/login``; a caller without the page's scope gets a 403 page."""
    if request.endpoint in ("views.login", "views.logout") or request.url_rule is None:
        return None
    if principal() is None:
        nxt = request.full_path if request.query_string else request.path
        return redirect(url_for("views.login", next=nxt))
    try:
        check_route(request.url_rule)
    except Forbidden:
        abort(403)
    return None


bp.after_request(page_headers)


@bp.app_context_processor
def template_globals():
    return {"csrf_token": csrf_token, "auth_required": auth_required(), **viewer(),
            "alpine_src": url_for("static", filename=f"vendor/alpinejs-{ALPINE_VERSION}/alpine.min.js"),
            "static_version": _static_version(),
            "trace_url": current_app.config.get("QUAERO_TRACE_URL")}


def viewer():
    """Who is looking, for the pages: the actions shown are those the caller may take."""
    try:
        who = principal()
    except Exception:  # a page of an error (a refused Bearer key...): show no actions
        who = None
    return {"viewer": None if who is None or who.kind == "local" else access.describe(who),
            "can_operate": who is not None and who.has(OPERATE),
            "is_admin": who is not None and who.is_admin,
            "signed_in": who is not None and who.kind == "session"}


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
    headers = {}
    token_login = current_app.config.get("QUAERO_API_TOKEN") is not None
    if request.method == "POST" and not token_login:
        error, status = "This server takes no token: sign in with the identity provider.", 400
    elif request.method == "POST":
        if not csrf_valid(request.form.get("csrf_token")):
            error, status = "Your session expired; please try again.", 400
        else:
            engine = current_app.extensions["quaero"].engine
            now = utcnow()
            address = "addr:" + client_address()
            limits = {address: access.LOGIN_FAILURES_PER_ADDRESS,
                      "account:token": access.LOGIN_FAILURES_PER_ACCOUNT}
            wait = keystore.login_wait(engine, limits, now)
            given = request.form.get("token", "")
            if wait is not None:
                error, status = f"Too many failed sign-ins; try again in {wait} s.", 429
                headers["Retry-After"] = str(wait)
            elif same_secret(given, current_app.config["QUAERO_API_TOKEN"]):
                keystore.login_succeeded(engine, address)
                sign_in("token", "admin")
                return redirect(nxt)
            else:
                keystore.login_failed(engine, list(limits), now)
                audit("sign-in-failed", f"failed to sign in from {client_address()}",
                      who="anonymous")
                time.sleep(0.5)              # a guess costs time (gevent: nothing else waits)
                error, status = "That token is not valid.", 401
    oidc = oidc_settings()
    return render_template("login.html", error=error, next=nxt, token_login=token_login,
                           oidc_name=oidc and oidc["name"]), status, headers


@bp.post("/logout")
def logout():
    if SESSION_KEY in session and not csrf_valid(request.form.get("csrf_token")):
        abort(400)
    with_provider = bool(session.get(oidc_client.MARK_KEY))
    sign_out()
    # a person who came from the identity provider signs out there too (where it can)
    return redirect(oidc_client.provider_logout_url(with_provider)
                    or (url_for("views.login") if auth_required() else url_for("views.index")))


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


@bp.get("/settings")
def settings():
    """API keys: list, create (the secret shown once), revoke. Admins only."""
    return render_template("settings.html", page="settings")


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
    from ..alerts.status import status_json
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
    return render_template("alerts.html", page="alerts", alerts=status_json(service),
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
