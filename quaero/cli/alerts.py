"""``quaero alerts list`` and ``quaero alerts test RULE``: the server's alert rules, their
state and last delivery; a test notification sent to a rule's destinations."""
from urllib.parse import quote

import click

from .common import api_call, json_option, server_options


@click.group()
def alerts():
    """Alert rules: list them, send a test notification."""


@alerts.command("list")
@server_options
@json_option
@click.pass_obj
def list_(settings, as_json):
    """The rules (state, last firing, last delivery) and destinations."""
    import json
    data = api_call(settings, "GET", "/api/alerts")
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    for rule in data["rules"]:
        if rule.get("error"):
            click.echo(click.style(f"{rule['name']} ({rule['file']}): NOT LOADED: {rule['error']}",
                                   fg="red"))
            continue
        last = rule.get("last_delivery")
        delivery = "no delivery yet" if not last else (
            f"last delivery {last['status']} to {last['destination']} at {last['at']}"
            + (f": {last['error']}" if last.get("error") else ""))
        state = rule.get("state") or "?"
        click.echo(f"{rule['name']} [{rule['kind']}] "
                   + click.style(state, fg="red" if state == "firing" else "green")
                   + f", last fired {rule.get('last_fired_at') or 'never'}, {delivery}"
                   + f" -> {', '.join(rule.get('notify') or ()) or 'nobody'}")
    for d in data["destinations"]:
        click.echo(f"destination {d['name']} [{d['type']}] {d.get('url') or ', '.join(d.get('to', []))}")
    if not data["rules"]:
        click.echo(f"no alert rules in {data.get('alerts_dir')}")


@alerts.command()
@server_options
@click.argument("rule")
@click.pass_obj
def test(settings, rule):
    """Send a test notification to RULE's destinations."""
    data = api_call(settings, "POST", f"/api/alerts/{quote(rule, safe='')}/test")
    click.echo(f"test notification of {data['rule']} queued for {', '.join(data['destinations'])} "
               "(see `quaero alerts list` for its delivery)")
