"""Development entry: ``python app.py`` serves Quaero on http://127.0.0.1:5000 under
gunicorn with gevent workers, on an embedded SQLite database in instance/."""
import os
import sys

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "-c",
                              os.path.join(here, "gunicorn.conf.py"), "wsgi:app"])
