"""Alerts: rules and destinations read from ``QUAERO_ALERTS_DIR`` (``config``), evaluated
by the one evaluator of the deployment (``service``, holding a lease in the database, see
``store``) over committed lines and job changes with pure state machines (``engine``), and
notifications recorded before they are sent, then sent with retries (``notify``)."""
