"""One shape for every API error: ``{"error": "..."}`` with the right status."""
from flask import jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException


class APIError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status, message):
    response = jsonify(error=message)
    response.status_code = status
    return response


def _wants_json():
    return request.path.startswith("/api/") or request.path in ("/healthz", "/metrics")


def init_app(app):
    @app.errorhandler(APIError)
    def api_error(exc):
        return error_response(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if _wants_json():
            message = {404: "not found", 405: "method not allowed",
                       413: "request body too large"}.get(exc.code, exc.description)
            response = error_response(exc.code, message)
            if exc.code == 405 and exc.valid_methods:
                response.headers["Allow"] = ", ".join(exc.valid_methods)
            return response
        return exc

    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.InterfaceError)
    @app.errorhandler(sa_exc.TimeoutError)
    def database_unavailable(exc):
        app.logger.warning("database unavailable on %s %s: %s", request.method, request.path,
                           exc.__class__.__name__)
        response = error_response(503, "database unavailable; retry later")
        response.headers["Retry-After"] = "2"
        return response

    @app.errorhandler(Exception)
    def unexpected(exc):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error")
