"""Outages, big jobs and login, in real headless Chromium against real gunicorn servers."""
import re

import httpx
from playwright.sync_api import expect

from .helpers import new_job, post, set_status
from .test_pages import service_panel

FAST = {"QUAERO_PING_INTERVAL": "1"}


def test_restart_shows_disconnected_then_connected_and_lines_once(server_factory, page):
    srv = server_factory(env=FAST)
    api = httpx.Client(base_url=srv.url, timeout=30)
    job = new_job(api, "outage", steps=["work"])
    set_status(api, job, "running")
    post(api, [{"level": "info", "message": f"job-before-{i}", "job_id": job, "step": "work"} for i in range(3)])
    post(api, [{"level": "info", "message": "svc-before"}])
    page.goto(f"{srv.url}/jobs/{job}")
    panel = service_panel(page)
    panel_state = panel.get_by_role("status")
    job_state = page.locator(".jobbar").get_by_role("status")
    joblog = page.get_by_role("log", name="Job log")
    expect(panel_state).to_have_text("connected")
    expect(job_state).to_have_text("connected")
    expect(joblog.locator(".ql-line")).to_have_count(3)
    expect(panel.locator(".ql-line", has_text="svc-before")).to_have_count(1)

    srv.stop()
    expect(panel_state).to_have_text("disconnected")
    expect(job_state).to_have_text("disconnected")
    assert panel_state.get_attribute("title")

    srv2 = server_factory(env=FAST, port=srv.port)
    api2 = httpx.Client(base_url=srv2.url, timeout=30)
    # posted at once, most likely before the page is back: it must catch up on them
    post(api2, [{"level": "info", "message": f"svc-during-{i}"} for i in range(3)])
    post(api2, [{"level": "info", "message": f"job-during-{i}", "job_id": job, "step": "work"} for i in range(3)])
    expect(panel_state).to_have_text("connected")
    expect(job_state).to_have_text("connected")
    post(api2, [{"level": "info", "message": "svc-after"}])
    post(api2, [{"level": "info", "message": "job-after", "job_id": job, "step": "work"}])
    expect(panel.locator(".ql-line", has_text="svc-after")).to_have_count(1)
    expect(joblog.locator(".ql-line", has_text="job-after")).to_have_count(1)
    for i in range(3):
        expect(panel.locator(".ql-line", has_text=f"svc-during-{i}")).to_have_count(1)
        expect(joblog.locator(".ql-line", has_text=f"job-during-{i}")).to_have_count(1)
    expect(panel.locator(".ql-line", has_text="svc-before")).to_have_count(1)
    expect(joblog.locator(".ql-line")).to_have_count(3 + 3 + 1)
    numbers = [int(n) for n in joblog.locator(".ql-ln").all_inner_texts()]
    assert numbers == list(range(1, 8))


def test_100k_line_job_keeps_the_dom_bounded(live, page):
    job = new_job(live, "huge", steps=["only"])
    set_status(live, job, "running")
    for b in range(10):
        post(live, [{"level": "info", "message": f"row {b * 10000 + i + 1}", "job_id": job, "step": "only"}
                    for i in range(10000)])
    page.goto(f"{live.server.url}/jobs/{job}")
    last = page.locator("#L100000")
    expect(last).to_be_in_viewport()
    expect(page.get_by_text(re.compile(r"^1000 of 100000 lines shown$"))).to_be_visible()
    lines = page.locator(".ql-line")
    assert lines.count() < 5000

    older = page.get_by_role("button", name="Load older lines")
    for first in (98001, 97001, 96001):
        older.click()
        expect(page.locator(f"#L{first}")).to_have_count(1)
        assert lines.count() < 5000
    # the window is full: the newest lines made room, and the way back is offered
    expect(page.locator("#L100000")).to_have_count(0)
    latest = page.get_by_role("button", name=re.compile("Jump to latest"))
    expect(latest).to_be_visible()
    assert page.locator(".joblog .ql-line").count() <= 3000

    # a permalink far outside the window
    page.evaluate("location.hash = '#L50'")
    expect(page.locator("#L50")).to_be_in_viewport()
    expect(page.locator("#L50")).to_have_class(re.compile("ql-target"))
    expect(page.locator("#L50")).to_contain_text("row 50")
    assert lines.count() < 5000

    latest.click()
    expect(page.locator("#L100000")).to_be_in_viewport()
    post(live, [{"level": "warn", "message": "still live", "job_id": job, "step": "only"}])
    expect(page.locator("#L100001")).to_be_in_viewport()
    assert lines.count() < 5000
    assert page.errors == []


def test_login_session_cookie_streams_and_csrf(server_factory, page):
    token = "s3cret-token"
    env = dict(FAST, QUAERO_API_TOKEN=token)
    srv = server_factory(env=env)
    api = httpx.Client(base_url=srv.url, timeout=30, headers={"Authorization": f"Bearer {token}"})
    job = new_job(api, "guarded")
    set_status(api, job, "running")
    post(api, [{"level": "info", "message": "for logged-in eyes"}])
    post(api, [{"level": "info", "message": "job line", "job_id": job, "step": "build"}])
    assert httpx.get(srv.url + "/api/jobs").status_code == 401
    assert httpx.post(srv.url + "/login", data={"token": token}).status_code == 400, "CSRF on the form"

    page.goto(f"{srv.url}/jobs/{job}")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    expect(page.get_by_role("heading", name="Log in to Quaero")).to_be_visible()
    assert page.errors == [], "the login page renders without console errors"
    page.get_by_label("API token").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{srv.url}/jobs/{job}")
    panel = service_panel(page)
    expect(panel.get_by_role("status")).to_have_text("connected")
    expect(panel.locator(".ql-line", has_text="for logged-in eyes")).to_have_count(1)   # folded here
    expect(page.locator("#L1")).to_contain_text("job line")

    # the page's own POSTs carry the CSRF token; a cookie-only POST without it is refused
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(".jobtitle .badge")).to_have_text("cancelled")
    status = page.evaluate("""() => fetch('/api/jobs', {method: 'POST', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({name: 'no csrf'})}).then(r => r.status)""")
    assert status == 403
    status = page.evaluate("""() => fetch('/api/jobs', {method: 'POST', headers: {'Content-Type': 'application/json',
        'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content},
        body: JSON.stringify({name: 'with csrf'})}).then(r => r.status)""")
    assert status == 201
    assert api.post("/api/jobs", json={"name": "bearer, no csrf"}).status_code == 201

    # the session outlives a restart (the key is derived from the token, not random)
    srv.stop()
    server_factory(env=env, port=srv.port)
    page.goto(f"{srv.url}/queue")
    expect(page).to_have_url(f"{srv.url}/queue")
    expect(page.locator("li.qrow", has_text="with csrf")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile("/login"))
    assert page.evaluate("() => fetch('/api/jobs').then(r => r.status)") == 401
    # refused requests (401/403 above, 503 while the server stopped) are logged by Chromium
    errors = [e for e in page.errors if "Failed to load resource" not in e]
    assert errors == []


def test_job_page_status_steps_and_download(live, page):
    job = new_job(live, "steps", steps=["fetch", "build"])
    set_status(live, job, "running")
    set_status(live, job, "running", step="fetch")
    post(live, [{"level": "info", "message": "fetching", "job_id": job, "step": "fetch"}])
    page.goto(f"{live.server.url}/jobs/{job}")
    fetch_step = page.get_by_role("button", name=re.compile("^fetch"))
    build_step = page.get_by_role("button", name=re.compile("^build"))
    expect(fetch_step).to_contain_text("running")
    expect(build_step).to_contain_text("pending")
    set_status(live, job, "completed", step="fetch")
    set_status(live, job, "running", step="build")
    post(live, [{"level": "error", "message": "compile failed", "job_id": job, "step": "build"}])
    expect(fetch_step).to_contain_text("completed")
    expect(build_step).to_contain_text("running")
    expect(fetch_step).to_contain_text(re.compile(r"\d+(\.\d)? (ms|s)"))
    expect(page.locator("#L2")).to_have_class(re.compile("ql-lv-error"))
    set_status(live, job, "failed")
    expect(page.locator(".jobtitle .badge")).to_have_text("failed")
    expect(page.locator(".jobbar").get_by_role("status")).to_have_text("disconnected (job finished)")
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    with page.expect_download() as info:
        page.get_by_role("link", name="Download").click()
    text = open(info.value.path()).read()
    assert "fetching" in text and "compile failed" in text
    # timestamps toggle
    ts = page.locator("#L1 .ql-ts")
    expect(ts).to_be_visible()
    page.get_by_role("checkbox", name="Timestamps").first.uncheck()
    expect(ts).to_be_hidden()
    assert page.errors == []


def test_run_a_definition_from_home_then_rerun(server_factory, tmp_path, page):
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir(exist_ok=True)
    (jobs_dir / "hello.toml").write_text(
        'description = "Says hello"\n\n[[steps]]\nname = "greet"\nrun = "echo hello from greet"\n')
    (jobs_dir / "broken.toml").write_text('[[steps]]\nname = "x"\nbogus = 1\n')
    srv = server_factory(env=FAST)
    api = httpx.Client(base_url=srv.url, timeout=30)
    defs = api.get("/api/job-definitions").json()["definitions"]
    if not any(d["name"] == "hello" for d in defs):
        import pytest
        pytest.skip("the job runner does not load definitions yet")
    page.goto(srv.url + "/")
    # a file that does not load is listed with its error, and cannot be started
    broken = page.locator("li.def", has_text="broken")
    expect(broken).to_contain_text("Cannot be started")
    expect(broken).to_contain_text("bogus")
    expect(broken.get_by_role("button")).to_have_count(0)
    page.get_by_role("button", name="Run hello").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f]+$"))
    first = page.url
    expect(page.locator(".ql-lv-info", has_text="hello from greet")).to_be_visible()
    expect(page.locator(".jobtitle .badge")).to_have_text("completed")
    page.get_by_role("button", name="Rerun").click()
    expect(page).not_to_have_url(first)
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f]+$"))
    expect(page.locator(".ql-lv-info", has_text="hello from greet")).to_be_visible()
    assert page.errors == []


def test_refused_streams_fall_back_to_polling_then_stream_again(server_factory, page):
    # A server that takes no stream (QUAERO_MAX_STREAMS=0) answers each with only a retry:
    # and closes it; the pages see streams that never deliver and poll instead.
    srv = server_factory(env=dict(FAST, QUAERO_MAX_STREAMS="0"))
    api = httpx.Client(base_url=srv.url, timeout=30)
    job = new_job(api, "polled", steps=["work"])
    set_status(api, job, "running")
    post(api, [{"level": "info", "message": "polled-0", "job_id": job, "step": "work"}])
    page.goto(f"{srv.url}/jobs/{job}")
    panel_state = service_panel(page).get_by_role("status")
    job_state = page.locator(".jobbar").get_by_role("status")
    expect(panel_state).to_have_text("polling")
    expect(job_state).to_have_text("polling")
    post(api, [{"level": "info", "message": f"polled-{i}", "job_id": job, "step": "work"} for i in (1, 2)])
    post(api, [{"level": "info", "message": "svc-polled"}])
    expect(service_panel(page).locator(".ql-line", has_text="svc-polled")).to_have_count(1)
    for i in range(3):
        expect(page.locator(".joblog .ql-line", has_text=f"polled-{i}")).to_have_count(1)
    # the job's status is polled too
    set_status(api, job, "completed", step="work")
    expect(page.get_by_role("button", name=re.compile("^work"))).to_contain_text("completed")

    # the server comes back without the cap: streaming again, nothing lost or repeated
    srv.stop()
    srv2 = server_factory(env=FAST, port=srv.port)
    api2 = httpx.Client(base_url=srv2.url, timeout=30)
    expect(panel_state).to_have_text("connected")
    expect(job_state).to_have_text("connected")
    post(api2, [{"level": "info", "message": "streamed-3", "job_id": job}])
    expect(page.locator(".joblog .ql-line", has_text="streamed-3")).to_have_count(1)
    numbers = [int(n) for n in page.locator(".joblog .ql-ln").all_inner_texts()]
    assert sorted(numbers) == [1, 2, 3, 4]     # the line outside the steps has a section of its own
    set_status(api2, job, "completed")
    expect(job_state).to_have_text("disconnected (job finished)")
