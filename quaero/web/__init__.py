"""The HTTP layer: the ``/api`` blueprint (``api_logs``, ``api_jobs``, ``openapi``), the
pages (``views``), ``/healthz`` and ``/metrics`` (``ops``); ``auth`` decides who may use
them and ``params`` parses what they are sent. The core modules know nothing of HTTP."""


def init_app(app):
    from . import api, api_jobs, api_logs, auth, openapi, ops, views  # noqa: F401  (routes)
    auth.init_app(app)  # first: the loopback rule comes before anything else
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(views.bp)
