"""``quaero import FILE...``: archived jobs (``QUAERO_ARCHIVE_DIR``'s ``<job id>.ndjson.gz``
files) back into the database, whole (see quaero/archive.py).

It writes to the database of this machine's settings (``QUAERO_DATABASE_URL``, else the
SQLite file of the instance folder), as ``run --local`` does, while the server runs or not;
it needs ``pip install "quaero[server]"``."""
import sys
from datetime import datetime, timedelta, timezone

import click

from .serve import SERVER_EXTRA, missing_server_modules


@click.command("import")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, readable=True))
def import_(files):
    """Bring archived jobs back: the same job id, name, status, times and steps, and the
    same lines (messages, levels, steps, timestamps, sources, line numbers; new line ids).

    A job that exists already is not imported again (exit status 1): delete it first."""
    missing = missing_server_modules()
    if missing:
        raise click.ClickException(f"import needs the server: {SERVER_EXTRA} "
                                   f"({missing[0]} is not installed)")
    from .. import create_app
    from ..archive import ArchiveRefused, import_archive
    app = create_app()
    state = app.extensions["quaero"]
    refused = 0
    try:
        for path in files:
            try:
                job, n = import_archive(state.engine, path)
            except ArchiveRefused as exc:
                click.echo(f"quaero import: {exc}", err=True)
                refused += 1
                continue
            click.echo(f"{path}: job {job['id']} ({job['name']}, {job['status']}) imported "
                       f"with {n} lines")
            _warn_if_pruned_again(job, app.config["QUAERO_RETENTION_DAYS"])
    finally:
        state.close()
    sys.exit(1 if refused else 0)


def _warn_if_pruned_again(job, days):
    finished = job.get("finished_at")
    if not days or not finished:
        return
    at = datetime.fromisoformat(finished)
    if at < datetime.now(timezone.utc) - timedelta(days=days):
        click.echo(f"quaero import: job {job['id']} finished more than {days:g} days ago: the "
                   "server's retention (QUAERO_RETENTION_DAYS) will prune it again at its next "
                   "pass unless that is raised or 0", err=True)
