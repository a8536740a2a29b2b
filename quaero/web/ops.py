"""Operations endpoints: health and metrics.

``/healthz`` is open on purpose (load balancers and orchestrators probe it without
credentials; it tells only ok/unavailable per dependency). ``/metrics`` is open unless
``QUAERO_METRICS_TOKEN`` or ``QUAERO_API_TOKEN`` is set (then a Bearer token). Without an
API token both, like everything else, answer loopback clients only (auth.py)."""
import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify

from ..deadline import DatabaseLate, reading
from ..metrics import exposition
from ..models import db
from .auth import require_metrics_token

HEALTH_DB_TIMEOUT = 1.5  # seconds: a probe answers within 2 s, whatever the database does

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    state = current_app.extensions["quaero"]
    checks = {}
    try:
        with reading(db.engine, HEALTH_DB_TIMEOUT) as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except DatabaseLate:
        checks["database"] = f"error: no answer within {HEALTH_DB_TIMEOUT:g} s"
    except Exception as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
    disk = state.disk.problem()
    if disk is not None:
        checks["disk"] = disk
    bridge = getattr(state.bus, "health", None)
    if bridge is not None:
        checks["redis"] = bridge()
    ok = all(v == "ok" for v in checks.values())
    extra = {} if state.hub is None else {"streams": state.hub.health()}
    return jsonify(status="ok" if ok else "unavailable", version=state.version, checks=checks, **extra), 200 if ok else 503


@bp.get("/metrics")
def metrics():
    require_metrics_token()
    state = current_app.extensions["quaero"]
    if state.hub is not None:
        state.hub.flush_metrics()  # streams count in plain integers between scrapes
    body, content_type = exposition(state.metrics.registry)  # every worker's, under gunicorn
    return current_app.response_class(body, content_type=content_type)
