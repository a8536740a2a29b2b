"""Production entry point: ``gunicorn wsgi:app`` (settings in gunicorn.conf.py); the
installed package's is ``quaero.wsgi:app`` (``quaero serve``), which this is."""
from gevent import monkey

monkey.patch_all()  # before anything imports socket, ssl or threading

from quaero.wsgi import app  # noqa: E402,F401
