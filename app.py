"""Development entry: ``python app.py`` serves Quaero on http://127.0.0.1:5000 under
gunicorn with gevent workers, on an embedded SQLite database in instance/.

Before gunicorn starts, a port that is taken or a database that cannot be used
(``QUAERO_DATABASE_URL``) stops it with one line saying so (``quaero.startup``)."""
import os
import sys

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)
    from quaero.config import ConfigError, export_file_settings
    from quaero.startup import preflight_or_exit
    try:
        export_file_settings()  # QUAERO_CONFIG's settings, where the environment has none
    except ConfigError as exc:
        sys.exit(f"quaero: {exc}")
    preflight_or_exit([(os.environ.get("QUAERO_HOST") or "127.0.0.1",
                        int(os.environ.get("QUAERO_PORT") or 5000))],
                      os.environ.get("QUAERO_DATABASE_URL"))
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c",
                              os.path.join(here, "gunicorn.conf.py"), "wsgi:app"])
