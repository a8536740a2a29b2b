"""``quaero sessions list|revoke SUBJECT``: sign-ins still open, and ending a person's, over
the sessions API with an admin credential (``--token``, env ``QUAERO_API_TOKEN``: the
server's token or an admin key)."""
import json

import click

from .common import api_call, server_options


@click.group()
def sessions():
    """List sign-ins and sign people out (needs the admin token or an admin key)."""


@sessions.command("list")
@server_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per session.")
@click.pass_obj
def list_(settings, as_json):
    """The sessions still open: who, role, since, until."""
    found = api_call(settings, "GET", "/api/sessions")["sessions"]
    if as_json:
        for s in found:
            click.echo(json.dumps(s))
        return
    rows = [("SUBJECT", "ROLE", "SINCE", "UNTIL")]
    rows += [(s["subject"], s["role"], _t(s["created_at"]), _t(s["expires_at"]))
             for s in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _t(iso):
    return (iso or "")[:19].replace("T", " ")


@sessions.command("revoke")
@server_options
@click.argument("subject")
@click.pass_obj
def revoke(settings, subject):
    """End every session of SUBJECT (an e-mail or the provider's sub, as `list` shows it):
    their cookies stop working at once. Whether they may sign in again is the identity
    provider's (groups) or QUAERO_OIDC_ALLOW's to say."""
    answer = api_call(settings, "DELETE", "/api/sessions", params={"subject": subject})
    click.echo(f"ended {answer['ended']} session(s) of {subject}")
