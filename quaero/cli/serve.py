"""``quaero serve``: the server as ``python app.py`` runs it (gunicorn with gevent workers and
the package's gunicorn.conf.py), from an installed package, in the current directory.

It needs ``pip install "quaero[server]"``; without it, one line says so. Options become the
settings they name (``--port`` is ``QUAERO_PORT``...), over the environment, which wins over
the ``--config`` file (``QUAERO_CONFIG``). A port that is taken or a database that cannot be
used stops it before gunicorn starts, with one line saying so (``quaero.startup``)."""
import importlib.util
import os
import sys

import click

SERVER_EXTRA = 'pip install "quaero[server]"'
# what `quaero serve` runs on; find_spec only looks, it imports nothing
SERVER_MODULES = ("flask", "flask_sqlalchemy", "flask_migrate", "alembic", "sqlalchemy",
                  "gevent", "gunicorn", "prometheus_client", "orjson", "psycopg", "redis")


def missing_server_modules():
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


@click.command()
@click.option("--host", help="Address to listen on (QUAERO_HOST)  [default: 127.0.0.1]")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port to listen on (QUAERO_PORT)  [default: 5000]")
@click.option("--workers", type=click.IntRange(1),
              help="gevent worker processes (QUAERO_WORKERS)  [default: 1]")
@click.option("--config", "config_file", metavar="FILE",
              help="A TOML file of QUAERO_* settings (QUAERO_CONFIG); the environment wins "
                   "over it.")
def serve(host, port, workers, config_file):
    """Run the Quaero server (needs quaero[server]), as `python app.py` does: gunicorn with
    gevent workers, on SQLite in the instance folder unless QUAERO_DATABASE_URL says
    otherwise. Job definitions come from QUAERO_JOBS_DIR (default: ./jobs)."""
    missing = missing_server_modules()
    if missing:
        named = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        click.echo(f"quaero serve: the server is not installed (no {named}): {SERVER_EXTRA}",
                   err=True)
        sys.exit(1)
    if config_file is not None:
        os.environ["QUAERO_CONFIG"] = os.path.abspath(config_file)
    from ..config import ConfigError, check_settings
    try:
        check_settings()
    except ConfigError as exc:
        click.echo(f"quaero serve: {exc}", err=True)
        sys.exit(1)
    for name, value in (("QUAERO_HOST", host), ("QUAERO_PORT", port),
                        ("QUAERO_WORKERS", workers)):
        if value is not None:
            os.environ[name] = str(value)
    from .. import PACKAGE_DIR
    from ..config import environment
    from ..startup import preflight_or_exit
    env = environment()  # a port that is taken, a database that cannot be used: one line
    address = (env.get("QUAERO_HOST") or "127.0.0.1", int(env.get("QUAERO_PORT") or 5000))
    preflight_or_exit([address], env.get("QUAERO_DATABASE_URL"))
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c",
                              os.path.join(PACKAGE_DIR, "gunicorn.conf.py"), "quaero.wsgi:app"])
