"""The alerts API: the rules, destinations and their state; a test notification."""
from flask import Blueprint, current_app, jsonify

from ..alerts.status import send_test, status_json
from ..errors import Conflict, NotFound

bp = Blueprint("alerts", __name__, url_prefix="/api")  # auth: web.auth, for all of /api


def _alerts():
    return current_app.extensions["quaero"].alerts


@bp.get("/alerts")
def list_alerts():
    return jsonify(status_json(_alerts()))


@bp.post("/alerts/<rule>/test")
def test_alert(rule):
    """Record a ``test`` notification for each of the rule's destinations; the evaluator
    (whichever process holds it) sends it at once: 202."""
    alerts = _alerts()
    alerts.library.load()
    if rule not in alerts.library.rules:
        raise NotFound(f"no alert rule named {rule!r} in {alerts.library.alerts_dir}")
    problem = alerts.library.rule_errors.get(rule)
    event_id, dests = send_test(alerts, rule)
    if not dests:
        raise Conflict(f"alert rule {rule!r} has no destination to send to"
                       + (f" ({problem})" if problem else ""))
    return jsonify(rule=rule, event_id=event_id, destinations=dests), 202
