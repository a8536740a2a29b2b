"""The Redis bus against a Redis that does not answer (a real refused socket)."""
import logging

import gevent
from gevent.pool import Group

from quaero.bus import RedisBus, redact
from tests.helpers import free_port


def test_redact_hides_only_the_password():
    assert redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("redis://user:pw@h/1") == "redis://user:***@h/1"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_a_redis_that_does_not_answer_is_logged_once_loudly(caplog):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nobody listens there
    bus = RedisBus(url, "quaero:test:bus")
    group = Group()
    bus.start(group)
    caplog.set_level(logging.DEBUG, logger="quaero.bus")
    assert bus.health().startswith("error") or bus.health() == "not connected yet"
    for i in range(5):  # the publisher fails too, on every message
        bus.publish_lines([{"id": i, "message": "x"}])
        gevent.sleep(0.3)
    gevent.sleep(2)  # the subscriber retries several times meanwhile (0.2, 0.4, 0.8 s ...)
    records = [r for r in caplog.records if r.name == "quaero.bus"]
    assert [r.levelname for r in records] == ["ERROR"], [r.getMessage() for r in records]
    text = records[0].getMessage()
    assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in text
    assert "hunter2" not in text and "does not answer" in text
    assert bus.health().startswith("error")
    bus.stop()
    group.kill()
