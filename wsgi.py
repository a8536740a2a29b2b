"""Production entry point: ``gunicorn wsgi:app`` (settings in gunicorn.conf.py)."""
from gevent import monkey

monkey.patch_all()  # before anything imports socket, ssl or threading

from quaero import create_app  # noqa: E402
from quaero.cli import cli  # noqa: E402

app = create_app()
app.cli.add_command(cli, "quaero")  # `flask --app wsgi quaero run demo` = `python -m quaero run demo`
