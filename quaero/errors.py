"""One shape for every API error: ``{"error": "..."}`` with the right status."""
from flask import jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException


class QuaeroError(Exception):
    """A domain error: core modules raise these and know nothing of HTTP; the web layer
    maps each kind to its status here, in one place."""
    status = 400

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class Invalid(QuaeroError):
    """The request's content is wrong (shape, value, unknown level...)."""
    status = 400


class NotFound(QuaeroError):
    status = 404


class JobNotFound(NotFound):
    def __init__(self, message="job not found"):
        super().__init__(message)


class StepNotFound(NotFound):
    def __init__(self, message="step not found"):
        super().__init__(message)


class DefinitionInvalid(NotFound):
    """A job definition that does not exist or does not load: it cannot be started."""


class Conflict(QuaeroError):
    """The thing exists but is in a state that forbids the change (e.g. a running job)."""
    status = 409


class TooLarge(QuaeroError):
    status = 413


class AuthRequired(QuaeroError):
    """No valid token (Bearer or login session) where one is configured."""
    status = 401

    def __init__(self, message="authentication required"):
        super().__init__(message)


class Refused(QuaeroError):
    """Not allowed from here: off loopback without a token, cross-site, bad CSRF token."""
    status = 403


class Unavailable(QuaeroError):
    """A dependency (database, Redis) is away or the server is stopping: retry later."""
    status = 503


class APIError(Exception):
    """An HTTP error raised by the web layer itself (auth, CSRF, parsing)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status, message):
    response = jsonify(error=message)
    response.status_code = status
    return response


def _wants_json():
    return request.path.startswith(("/api/", "/v1/")) or request.path in ("/healthz", "/metrics")


def init_app(app):
    @app.errorhandler(APIError)
    @app.errorhandler(QuaeroError)
    def api_error(exc):
        response = error_response(exc.status, exc.message)
        if exc.status == 503:
            response.headers["Retry-After"] = "2"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if _wants_json():
            message = {404: "not found", 405: "method not allowed",
                       413: f"request body too large: at most "
                            f"{app.config['MAX_CONTENT_LENGTH']} bytes per request"
                       }.get(exc.code, exc.description)
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
