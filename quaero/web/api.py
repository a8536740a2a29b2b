"""The one ``/api`` blueprint: every API route is added to it by ``api_logs`` and
``api_jobs`` (and ``openapi``), and its ``before_request`` checks the token for all."""
from flask import Blueprint, current_app

from .auth import require_token

bp = Blueprint("api", __name__, url_prefix="/api")
bp.before_request(require_token)


def quaero():
    return current_app.extensions["quaero"]
