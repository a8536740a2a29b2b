"""One shape for every API error: ``{"error": "..."}`` with the right status."""
from flask import jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException


class QuaeroError(Exception):
    """A domain error: core modules raise these and know nothing of HTTP; the web layer
    maps each kind to its status in one place, :data:`STATUSES`."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class Invalid(QuaeroError):
    """The request's content is wrong (shape, value, unknown level...)."""


class NotFound(QuaeroError):
    pass


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


class TooLarge(QuaeroError):
    pass


class Unsupported(QuaeroError):
    """A body in a format (Content-Type, Content-Encoding) the endpoint does not take."""


class AuthRequired(QuaeroError):
    """No valid token (Bearer or login session) where one is configured."""

    def __init__(self, message="authentication required"):
        super().__init__(message)


class Refused(QuaeroError):
    """Not allowed from here: off loopback without a token, cross-site, bad CSRF token."""


class Forbidden(Refused):
    """Known credentials that lack the scope (or the job pattern) a request needs."""


class Unavailable(QuaeroError):
    """A dependency (database, Redis) is away or the server is stopping: retry later."""


class DiskFull(QuaeroError):
    """The database's disk is full, or below its free-space floor: nothing was stored."""


class Failed(QuaeroError):
    """Something went wrong that is not the request's fault (logged where it happened)."""


# The one table from error kinds to HTTP statuses (a subclass takes its nearest base's).
STATUSES = {Invalid: 400, AuthRequired: 401, Refused: 403, NotFound: 404, Conflict: 409,
            TooLarge: 413, Unsupported: 415, Failed: 500, Unavailable: 503, DiskFull: 507}
RETRY_AFTER = {503: "2", 507: "30"}


def status_of(exc):
    for kind in type(exc).__mro__:
        if kind in STATUSES:
            return STATUSES[kind]
    return 500


def error_response(status, message):
    response = jsonify(error=message)
    response.status_code = status
    return response


def _wants_json():
    return (request.path.startswith(("/api/", "/v1/", "/loki/"))
            or request.path in ("/healthz", "/metrics"))


def init_app(app):
    @app.errorhandler(QuaeroError)
    def api_error(exc):
        status = status_of(exc)
        response = error_response(status, exc.message)
        if status in RETRY_AFTER:
            response.headers["Retry-After"] = RETRY_AFTER[status]
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
        page = app.extensions.get("quaero_error_page")    # the pages' own (web/views.py)
        return page(exc) if page else exc

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
