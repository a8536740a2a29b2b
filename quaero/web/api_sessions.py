"""The sessions API (admin only, ``access.ROUTE_NEEDS``): ``GET /api/sessions`` lists the
sign-ins still open (who, role, since, until); ``DELETE /api/sessions?subject=…`` ends
every session of a person (or of ``token``): a copy of their cookie stops working on
every worker and host from the next request on. It does not stop them signing in again:
that is the identity provider's (a group) or ``QUAERO_OIDC_ALLOW``'s to decide. Each
revocation is an audit line."""
from flask import Blueprint, current_app, jsonify, request

from .. import keystore
from ..errors import Invalid
from ..models import utcnow
from .auth import audit

bp = Blueprint("sessions", __name__, url_prefix="/api")  # auth: web.auth (admin)


def _engine():
    return current_app.extensions["quaero"].engine


@bp.get("/sessions")
def list_sessions():
    return jsonify(sessions=keystore.list_sessions(_engine(), utcnow()))


@bp.delete("/sessions")
def revoke_sessions():
    subject = request.args.get("subject", "")
    if not subject.strip() or len(subject) > 200:
        raise Invalid("subject must name who to sign out (1 to 200 characters)")
    ended = keystore.end_sessions_of(_engine(), subject, utcnow())
    audit("session-revoke", f"ended {ended} session(s) of {subject}", subject=subject,
          ended=ended)
    return jsonify(subject=subject, ended=ended)
