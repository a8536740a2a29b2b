"""The server's WSGI entry: ``gunicorn quaero.wsgi:app`` (what ``quaero serve`` runs, with
the package's gunicorn.conf.py); the repository's ``wsgi.py`` is this one."""
from gevent import monkey

monkey.patch_all()  # before anything imports socket, ssl or threading

from quaero import create_app  # noqa: E402

import sys  # noqa: E402

app = create_app()

if "gunicorn" in sys.modules:
    # Imported by a gunicorn worker (gunicorn loads the app in each worker after the fork):
    # this worker's background work starts here, also under a gunicorn started without
    # gunicorn.conf.py (whose post_worker_init then finds it started). Not in `flask` CLI
    # commands, which import this module too but must not run jobs.
    app.extensions["quaero"].start()
else:
    # `flask --app wsgi quaero run demo` = `quaero run demo`, and Flask-Migrate's
    # `flask --app wsgi db migrate` for new revisions. Not in a worker: the command line's
    # modules and Alembic (which Flask-Migrate imports) cost each worker's start 0.1-0.3 s
    # of CPU each, for nothing.
    from flask_migrate import Migrate

    from quaero.cli import cli
    from quaero.migrate import MIGRATIONS
    from quaero.models import db
    app.cli.add_command(cli, "quaero")
    Migrate(app, db, directory=MIGRATIONS)
