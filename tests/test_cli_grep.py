"""``python -m quaero grep`` as a subprocess against a real gunicorn server."""
import time

import httpx

from tests.test_cli import CLI


def new_job(api, name):
    r = api.post("/api/jobs", json={"name": name, "steps": ["s"]})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def post(api, lines):
    r = api.post("/api/logs", json={"logs": lines})
    assert r.status_code == 201, r.text


def messages(cli):
    return [ln["message"] for ln in cli.json_lines()]


def test_grep_everywhere_and_in_one_job(server):
    with httpx.Client(base_url=server.url, timeout=30) as api:
        a, b = new_job(api, "a"), new_job(api, "b")
        post(api, [{"level": "info", "job_id": a, "message": f"a {n} Disk Full" if n % 2 == 0 else f"a {n}"}
                   for n in range(1200)])
        post(api, [{"level": "error", "job_id": b, "message": "b: disk full!"},
                   {"level": "warn", "message": "service: DISK FULL on /var"},
                   {"level": "info", "job_id": b, "message": "b: fine"}])

        # everywhere: the newest --max matches, printed oldest first (the newest last)
        cli = CLI("grep", "disk full", "--url", server.url, "--json", "--max", "5")
        assert cli.wait() == 0, cli.err
        assert messages(cli) == ["a 1194 Disk Full", "a 1196 Disk Full", "a 1198 Disk Full",
                                 "b: disk full!", "service: DISK FULL on /var"]
        # every match (602: two pages of /api/search, back through next_before), and the
        # level filter
        cli = CLI("grep", "disk full", "--url", server.url, "--json", "--all", "--level", "warn")
        assert cli.wait() == 0, cli.err
        assert messages(cli) == ["b: disk full!", "service: DISK FULL on /var"]
        cli = CLI("grep", "DISK FULL", "--url", server.url, "--json", "--all")
        assert cli.wait() == 0
        assert len(messages(cli)) == 602
        ids = [ln["id"] for ln in cli.json_lines()]
        assert ids == sorted(set(ids))

        # one job: its matches only, in order; the text form names no job
        cli = CLI("grep", "disk full", "--job", a, "--url", server.url, "--all")
        assert cli.wait() == 0
        assert [x.split("INFO  ", 1)[1] for x in cli.out] == [f"a {n} Disk Full" for n in range(0, 1200, 2)]
        cli = CLI("grep", "disk full", "--job", a, "--url", server.url, "--json", "--max", "2")
        assert cli.wait() == 0
        assert messages(cli) == ["a 1196 Disk Full", "a 1198 Disk Full"]

        # nothing found: exit 1, like grep; a job that does not exist: an error
        cli = CLI("grep", "nowhere at all", "--url", server.url)
        assert cli.wait() == 1 and cli.out == []
        cli = CLI("grep", "x", "--job", "nosuchjob", "--url", server.url)
        assert cli.wait() == 1
        assert any("404" in x for x in cli.err), cli.err


def test_grep_follow_prints_new_matches_of_a_job_until_it_ends(server):
    with httpx.Client(base_url=server.url, timeout=30) as api:
        job = new_job(api, "live")
        post(api, [{"level": "info", "job_id": job, "message": m} for m in ("old match", "old other")])
        cli = CLI("grep", "MATCH", "--job", job, "--follow", "--url", server.url, "--json")
        try:
            cli.wait_for_output(lambda out: any("old match" in x for x in out))
            for n in range(3):
                post(api, [{"level": "info", "job_id": job, "message": f"new match {n}"},
                           {"level": "info", "job_id": job, "message": f"new other {n}"}])
                time.sleep(0.2)
            cli.wait_for_output(lambda out: any("new match 2" in x for x in out))
            api.patch(f"/api/jobs/{job}", json={"status": "completed"})
            assert cli.wait() == 0
        finally:
            cli.stop()
        assert messages(cli) == ["old match", "new match 0", "new match 1", "new match 2"]
        assert any("ended: completed" in x for x in cli.err)


def test_grep_follow_everywhere_polls_for_new_matches(server):
    with httpx.Client(base_url=server.url, timeout=30) as api:
        job = new_job(api, "anywhere")
        post(api, [{"level": "info", "message": "svc needle 1"}])
        cli = CLI("grep", "needle", "--follow", "--url", server.url, "--json")
        try:
            cli.wait_for_output(lambda out: any("svc needle 1" in x for x in out))
            post(api, [{"level": "info", "job_id": job, "message": "job needle 2"},
                       {"level": "info", "message": "hay"},
                       {"level": "warn", "message": "svc needle 3"}])
            cli.wait_for_output(lambda out: any("svc needle 3" in x for x in out), timeout=20)
        finally:
            cli.stop()
        assert messages(cli) == ["svc needle 1", "job needle 2", "svc needle 3"]


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_grep_and_tail_filter_by_attributes_and_print_them(server):
    with httpx.Client(base_url=server.url, timeout=30) as api:
        job = new_job(api, "attrs")
        post(api, [
            {"level": "error", "job_id": job, "message": "checkout failed",
             "attributes": {"user.id": "42", "http.status_code": 500, "note": "two words"},
             "trace_id": TRACE, "span_id": "00f067aa0ba902b7"},
            {"level": "info", "job_id": job, "message": "checkout ok",
             "attributes": {"user.id": "42", "http.status_code": 200}},
            {"level": "info", "job_id": job, "message": "checkout ok",
             "attributes": {"user.id": "7", "http.status_code": 200}},
            {"level": "warn", "message": "service says 42", "attributes": {"user.id": "42"}}])

        # everywhere, no TEXT: every line with the attribute; --json: lines as the API has them
        cli = CLI("grep", "--attr", "user.id=42", "--url", server.url, "--json")
        assert cli.wait() == 0, cli.err
        got = cli.json_lines()
        assert [x["message"] for x in got] == ["checkout failed", "checkout ok", "service says 42"]
        assert got[0]["attributes"] == {"user.id": "42", "http.status_code": 500,
                                        "note": "two words"}
        assert (got[0]["trace_id"], got[0]["span_id"]) == (TRACE, "00f067aa0ba902b7")
        # TEXT and repeated --attr all match; numbers compared as text
        cli = CLI("grep", "checkout", "--attr", "user.id=42", "--attr", "http.status_code=200",
                  "--url", server.url, "--json")
        assert cli.wait() == 0, cli.err
        assert [x["attributes"]["user.id"] for x in cli.json_lines()] == ["42"]
        # one job, plain text: the attributes and ids after the message
        cli = CLI("grep", "--trace-id", TRACE.upper(), "--job", job, "--url", server.url)
        assert cli.wait() == 0, cli.err
        assert len(cli.out) == 1 and cli.out[0].endswith(
            'ERROR checkout failed user.id=42 http.status_code=500 note="two words" '
            f"trace_id={TRACE} span_id=00f067aa0ba902b7"), cli.out
        cli = CLI("grep", "--attr", "user.id=nobody", "--url", server.url)
        assert cli.wait() == 1 and cli.out == []

        # tail: the filters on the stream, to the job's end
        api.patch(f"/api/jobs/{job}", json={"status": "completed"})
        cli = CLI("tail", job, "--attr", "http.status_code=200", "--all", "--url", server.url,
                  "--json")
        assert cli.wait() == 0, cli.err
        assert [(x["message"], x["attributes"]["user.id"]) for x in cli.json_lines()] == [
            ("checkout ok", "42"), ("checkout ok", "7")]
        cli = CLI("tail", job, "--trace-id", TRACE, "--all", "--url", server.url)
        assert cli.wait() == 0, cli.err
        assert [x.split("ERROR ", 1)[1] for x in cli.out] == [
            'checkout failed user.id=42 http.status_code=500 note="two words" '
            f"trace_id={TRACE} span_id=00f067aa0ba902b7"]

    for args in (["grep"], ["grep", "--attr", "novalue"], ["tail", "x", "--attr", "=v"]):
        cli = CLI(*args, "--url", server.url)
        assert cli.wait() == 2, (args, cli.err)
