"""What the API, the page and the CLI show of the alerts, and the test notification."""
import uuid

from ..models import iso
from . import engine, store


def send_test(service, rule_name):
    """Record a ``test`` notification of ``rule_name`` for each of its known destinations
    (the evaluator, wherever it runs, sends it); ``(event id, destinations)``; KeyError if
    there is no such rule."""
    library = service.library
    library.load()
    rule = library.rules[rule_name]
    dests = [n for n in rule.notify if n in library.destinations]
    notice = engine.Notice(rule.name, rule.kind, "test", f"{rule.name}/test/{uuid.uuid4().hex}",
                           0, f"{rule.name}: a test notification from Quaero")
    with service.engine.begin() as conn:
        event_id = store.add_event(conn, notice.key, rule.name, "test",
                                   engine.payload(notice, rule, service.public_url), dests)
    service.sender.wake.set()
    return event_id, dests


def status_json(service):
    """``GET /api/alerts``: the rules with their state, last firing and last delivery (a
    file that does not load as a rule with its ``error``), the destinations, and which
    process evaluates."""
    rules, dests, files = service.library.json()
    status = store.rule_status(service.engine)
    for rule in rules:
        st = status.get(rule["name"], {})
        rule["state"] = st.get("state") or ("ok" if "error" not in rule else None)
        rule["last_fired_at"] = iso(st.get("last_fired_at"))
        last = st.get("last_delivery")
        rule["last_delivery"] = dict(last, at=iso(last["at"])) if last else None
    for f in files:
        rules.append({"name": f["file"].rsplit(".", 1)[0], "kind": None, "file": f["file"],
                      "state": None, "last_fired_at": None, "last_delivery": None,
                      "error": f["error"]})
    return {"rules": rules, "destinations": dests, "evaluator": service.lease.who(),
            "alerts_dir": service.library.alerts_dir}
