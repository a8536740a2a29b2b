"""The HTTP layer: the API blueprints under ``/api`` (``api_logs``, ``api_jobs``,
``openapi``), the pages (``views``), ``/healthz`` and ``/metrics`` (``ops``); ``auth``
decides who may use them (one check for every ``/api`` path) and ``params`` parses what
they are sent. The core modules know nothing of HTTP."""


def init_app(app):
    from .jsonio import OrjsonProvider
    app.json = OrjsonProvider(app)  # jsonify and request.json through orjson
    from . import (api_histogram, api_jobs, api_keys, api_logs, api_search, auth, loki,
                   openapi, ops, otlp, stream, views)
    auth.init_app(app)  # first: the loopback rule and the token come before anything else
    from .params import close_unread_body
    app.after_request(close_unread_body)
    for module in (api_logs, api_histogram, api_jobs, api_keys, api_search, stream, openapi, otlp,
                   loki):
        app.register_blueprint(module.bp)
    from . import api_alerts, api_sessions, oidc
    app.register_blueprint(api_alerts.bp)
    app.register_blueprint(api_sessions.bp)
    oidc.init_app(app)
    app.register_blueprint(ops.bp)
    app.register_blueprint(views.bp)
