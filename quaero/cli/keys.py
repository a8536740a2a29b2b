"""``quaero keys create|list|revoke``: API keys, over the keys API with an admin credential
(``--token``, env ``QUAERO_API_TOKEN``: the server's token or an admin key)."""
import json

import click

from .common import api_call, server_options

SCOPES = ("ingest", "read", "operate", "admin")


@click.group()
def keys():
    """Make, list and revoke API keys (needs the admin token or an admin key)."""


@keys.command("create")
@server_options
@click.option("--name", required=True, help="What the key is for (shown in the audit trail).")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(SCOPES),
              help="A scope (repeatable): ingest, read, operate, admin (admin implies all).")
@click.option("--jobs", "jobs", metavar="PATTERN",
              help="Only jobs whose name matches PATTERN (* and ?), e.g. 'nightly-*'.")
@click.option("--source", "sources", multiple=True, metavar="NAME",
              help="Lines it sends must name this source (repeatable), e.g. 'ci'.")
@click.option("--expires", metavar="ISO", help="Expiry, ISO 8601 (without a zone: UTC).")
@click.option("--json", "as_json", is_flag=True, help="The API's answer as JSON.")
@click.pass_obj
def create(settings, name, scopes, jobs, sources, expires, as_json):
    """Make a key and print it: it is shown this once and never again."""
    body = {"name": name, "scopes": list(scopes)}
    if jobs:
        body["jobs"] = jobs
    if sources:
        body["sources"] = list(sources)
    if expires:
        body["expires_at"] = expires
    key = api_call(settings, "POST", "/api/keys", json=body)
    if as_json:
        click.echo(json.dumps(key))
        return
    click.echo(key["key"])
    click.echo(f"key {key['id']} ({key['name']}): {', '.join(key['scopes'])}"
               f"{' for jobs ' + key['jobs'] if key['jobs'] else ''}"
               f"{' as source ' + ', '.join(key['sources']) if key.get('sources') else ''}"
               f"{', expires ' + key['expires_at'] if key['expires_at'] else ''}. "
               "Copy it now: it is not shown again.", err=True)


@keys.command("list")
@server_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
@click.pass_obj
def list_(settings, as_json):
    """The keys not revoked (never their secrets)."""
    found = api_call(settings, "GET", "/api/keys")["keys"]
    if as_json:
        for key in found:
            click.echo(json.dumps(key))
        return
    rows = [("ID", "NAME", "SCOPES", "JOBS", "CREATED", "LAST USED", "EXPIRES")]
    for k in found:
        rows.append((k["id"], k["name"], ",".join(k["scopes"]), k["jobs"] or "*",
                     _t(k["created_at"]), _t(k["last_used_at"]) or "never",
                     _t(k["expires_at"]) or "never"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _t(iso):
    return (iso or "")[:19].replace("T", " ")


@keys.command("revoke")
@server_options
@click.argument("key_id")
@click.pass_obj
def revoke(settings, key_id):
    """Revoke a key: refused from the next request on, on every worker and host."""
    api_call(settings, "DELETE", f"/api/keys/{key_id}")
    click.echo(f"key {key_id} revoked")
