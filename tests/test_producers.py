"""Producers: the ``source`` of a line, ``python -m quaero exec``/``pipe`` and
``quaero.client.QuaeroHandler``, end to end against real servers."""
import pytest


@pytest.fixture
def c(any_app):
    return any_app.test_client()


def _post(c, *lines):
    return c.post("/api/logs", json={"logs": list(lines)})


def test_source_is_stored_returned_and_filters(c):
    assert _post(c, {"level": "info", "message": "a", "source": "billing"},
                 {"level": "warn", "message": "b"},
                 {"level": "error", "message": "c", "source": "api"}).status_code == 201
    logs = c.get("/api/logs?scope=service&level=debug").get_json()["logs"]
    assert [(line["message"], line["source"]) for line in logs][-3:] == [
        ("a", "billing"), ("b", None), ("c", "api")]
    got = c.get("/api/logs?scope=service&level=debug&source=billing").get_json()
    assert [line["message"] for line in got["logs"]] == ["a"]
    assert got["meta"]["total_count"] == 1
    got = c.get("/api/logs?scope=service&level=warn&source=billing").get_json()
    assert got["logs"] == [] and got["meta"]["total_count"] == 0


@pytest.mark.parametrize("source", [5, "x" * 201, ["a"], {"a": 1}])
def test_bad_source_is_400_and_nothing_stored(c, source):
    r = _post(c, {"level": "info", "message": "ok"},
              {"level": "info", "message": "bad", "source": source})
    assert r.status_code == 400 and "source" in r.get_json()["error"]
    assert c.get("/api/logs?scope=service&level=debug&q=bad").get_json()["logs"] == []


@pytest.mark.parametrize("query", ["source=", "source=" + "y" * 201])
def test_bad_source_filter_is_400(c, query):
    r = c.get("/api/logs?scope=service&" + query)
    assert r.status_code == 400 and "source" in r.get_json()["error"]
