"""The pages in real headless Chromium against a real gunicorn server."""
import re

from playwright.sync_api import expect

from .helpers import new_job, post, set_status, streams_open


def service_panel(page):
    return page.get_by_role("region", name="Service logs")


def wait_connected(scope):
    expect(scope.get_by_role("status").first).to_have_text("connected")


def test_each_page_renders_without_console_errors(live, page):
    job = new_job(live, "build-web")
    set_status(live, job, "running")
    set_status(live, job, "running", step="build")
    post(live, [{"level": "info", "message": f"compiling {i}", "job_id": job, "step": "build"}
                for i in range(20)])
    post(live, [{"level": "info", "message": "service says hello"}])
    url = live.server.url
    for path, marker in [("/", "Recent jobs"), ("/queue", "Queue"), (f"/jobs/{job}", "build-web")]:
        page.goto(url + path)
        panel = service_panel(page)
        expect(panel).to_be_visible()
        wait_connected(panel)
        if path.startswith("/jobs/"):      # the job page's panel starts folded to its bar
            panel.get_by_role("button", name="Show").click()
        expect(panel.locator(".ql-line", has_text="service says hello")).to_be_visible()
        expect(page.get_by_text(marker).first).to_be_visible()
        # what the contract promises a person (and an accessibility tool) finds
        expect(panel.get_by_role("button", name="Clear")).to_be_visible()
        expect(panel.get_by_role("checkbox", name="Auto-scroll")).to_be_checked()
        options = panel.get_by_role("combobox", name=re.compile("level", re.I)).locator("option")
        expect(options).to_have_text(["debug", "info", "warn", "error"])
        line = panel.locator(".ql-line", has_text="service says hello")
        assert re.match(r"\d+", line.locator(".ql-ln").inner_text())
    expect(page.locator(".joblog .ql-line")).to_have_count(20)
    expect(page.locator("#L20")).to_contain_text("compiling 19")
    page.goto(url + "/login")            # no token configured: straight to the home page
    expect(page).to_have_url(url + "/")
    wait_connected(service_panel(page))
    assert page.errors == []


def test_service_panel_live_level_filter_clear_and_autoscroll(live, page):
    page.goto(live.server.url + "/")
    panel = service_panel(page)
    wait_connected(panel)
    lines = panel.locator(".ql-line")
    post(live, [{"level": "info", "message": "live-one"}])
    expect(lines.filter(has_text="live-one")).to_have_count(1)

    # level filter: warn and above, from the server
    panel.get_by_role("combobox", name=re.compile("level", re.I)).select_option("warn")
    expect(lines.filter(has_text="live-one")).to_have_count(0)
    wait_connected(panel)
    post(live, [{"level": "info", "message": "info-hidden"}, {"level": "warn", "message": "warn-shown"},
                {"level": "error", "message": "error-shown"}])
    expect(lines.filter(has_text="error-shown")).to_have_count(1)
    expect(lines.filter(has_text="warn-shown")).to_have_class(re.compile("ql-lv-warn"))
    expect(lines.filter(has_text="info-hidden")).to_have_count(0)

    # clear empties the view; new lines still come, old ones do not come back
    panel.get_by_role("button", name="Clear").click()
    expect(lines).to_have_count(0)
    post(live, [{"level": "warn", "message": "after-clear"}])
    expect(lines.filter(has_text="after-clear")).to_have_count(1)
    expect(lines).to_have_count(1)

    # auto-scroll: follows the newest line
    panel.get_by_role("combobox", name=re.compile("level", re.I)).select_option("debug")
    wait_connected(panel)
    box = panel.get_by_role("log")
    post(live, [{"level": "debug", "message": f"fill {i}"} for i in range(120)])
    expect(lines.filter(has_text="fill 119")).to_be_in_viewport()

    def at_bottom():
        return box.evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight <= 24")

    page.wait_for_function("el => el.scrollHeight - el.scrollTop - el.clientHeight <= 24",
                           arg=box.element_handle())
    # off: the view stays where it is
    panel.get_by_role("checkbox", name="Auto-scroll").uncheck()
    box.evaluate("el => { el.scrollTop = 0; }")
    post(live, [{"level": "debug", "message": f"more {i}"} for i in range(60)])
    expect(lines.filter(has_text="more 59")).to_have_count(1)
    assert box.evaluate("el => el.scrollTop") == 0
    expect(lines.filter(has_text="more 59")).not_to_be_in_viewport()
    # on again: straight to the bottom, and following
    panel.get_by_role("checkbox", name="Auto-scroll").check()
    expect(lines.filter(has_text="more 59")).to_be_in_viewport()
    post(live, [{"level": "debug", "message": f"again {i}"} for i in range(60)])
    expect(lines.filter(has_text="again 59")).to_be_in_viewport()
    assert at_bottom()
    # follow pauses when the reader scrolls up, and resumes at the bottom
    box.evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
    post(live, [{"level": "debug", "message": f"paused {i}"} for i in range(40)])
    expect(lines.filter(has_text="paused 39")).to_have_count(1)
    assert box.evaluate("el => el.scrollTop") == 0
    box.evaluate("el => { el.scrollTop = el.scrollHeight; el.dispatchEvent(new Event('scroll')); }")
    post(live, [{"level": "debug", "message": f"resumed {i}"} for i in range(40)])
    expect(lines.filter(has_text="resumed 39")).to_be_in_viewport()
    # the level and the timestamps are remembered; auto-scroll is on whenever a page opens
    panel.get_by_role("checkbox", name="Timestamps").uncheck()
    panel.get_by_role("checkbox", name="Auto-scroll").uncheck()
    page.reload()
    panel = service_panel(page)
    wait_connected(panel)
    expect(panel.get_by_role("combobox", name=re.compile("level", re.I))).to_have_value("debug")
    expect(panel.get_by_role("checkbox", name="Timestamps")).not_to_be_checked()
    expect(panel.get_by_role("checkbox", name="Auto-scroll")).to_be_checked()
    expect(panel.locator(".ql-line", has_text="resumed 39")).to_have_count(1)
    expect(panel.locator(".ql-line .ql-ts").first).to_be_hidden()
    assert page.errors == []


def test_queue_expand_streams_and_collapse_closes_the_stream(live, page):
    job = new_job(live, "queue-job")
    set_status(live, job, "running")
    post(live, [{"level": "info", "message": f"early {i}", "job_id": job, "step": "build"} for i in range(5)])
    page.goto(live.server.url + "/queue")
    row = page.locator("li.qrow", has_text="queue-job")
    toggle = row.locator("button[aria-expanded]")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    assert streams_open(live, "job") == 0
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    log = row.get_by_role("log")
    expect(log.locator(".ql-line")).to_have_count(5)
    expect(log.locator(".ql-line").first).to_contain_text("early 0")
    post(live, [{"level": "warn", "message": "live in the queue", "job_id": job, "step": "test"}])
    expect(log.locator(".ql-line", has_text="live in the queue")).to_be_visible()
    expect(log.locator(".ql-line")).to_have_count(6)
    _wait(lambda: streams_open(live, "job") == 1, "the job stream is open on the server")
    # the status badge follows the job
    set_status(live, job, "completed")
    expect(row.locator(".qhead .badge")).to_have_text("completed")

    job2 = new_job(live, "second-job")
    set_status(live, job2, "running")
    page.reload()
    row = page.locator("li.qrow", has_text="second-job")
    toggle = row.locator("button[aria-expanded]")
    toggle.click()
    wait_connected(row)
    _wait(lambda: streams_open(live, "job") == 1, "the job stream is open on the server")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(row.get_by_role("log")).to_have_count(0)
    _wait(lambda: streams_open(live, "job") == 0, "collapsing closed the stream on the server")
    assert page.errors == []


def test_eight_jobs_expanded_at_once_all_stream_over_one_connection(live, page):
    jobs = []
    for i in range(8):
        job = new_job(live, f"parallel-{i}")
        set_status(live, job, "running")
        post(live, [{"level": "info", "message": f"job {i} backfill", "job_id": job}])
        jobs.append(job)
    page.goto(live.server.url + "/queue")
    rows = [page.locator("li.qrow", has_text=f"parallel-{i}") for i in range(8)]
    for row in rows:
        row.locator("button[aria-expanded]").click()
    for i, row in enumerate(rows):
        expect(row.locator("button[aria-expanded]")).to_have_attribute("aria-expanded", "true")
        expect(row.locator(".ql-line", has_text=f"job {i} backfill")).to_be_visible()
    for i, job in enumerate(jobs):
        post(live, [{"level": "info", "message": f"job {i} live", "job_id": job}])
    for i, row in enumerate(rows):
        expect(row.locator(".ql-line", has_text=f"job {i} live")).to_have_count(1)
        expect(row.locator(".ql-line")).to_have_count(2)
        wait_connected(row)
    _wait(lambda: streams_open(live, "job") == 1, "one job stream for eight jobs")
    assert page.errors == []


XSS = ['<script>window.__pwned = 1</script>', '<img src=x onerror="window.__pwned = 2">',
       '\x1b[31m<b>red</b> & <i>bold</i>\x1b[0m']


def test_untrusted_messages_render_as_text(live, page):
    job = new_job(live, '<img src=x onerror="window.__pwned = 3">', steps=["<b>step<b>"])
    set_status(live, job, "running")
    post(live, [{"level": "error", "message": m, "job_id": job, "step": "<b>step<b>"} for m in XSS])
    post(live, [{"level": "error", "message": m} for m in XSS])
    for path in ["/", f"/jobs/{job}", "/queue"]:
        page.goto(live.server.url + path)
        if path == "/queue":
            page.locator("li.qrow button[aria-expanded]").first.click()
        scopes = [service_panel(page)]
        if path != "/":
            scopes.append(page.locator(".joblog, .qlog").first)
        for scope in scopes:
            for message in XSS:
                text = message.replace("\x1b[31m", "").replace("\x1b[0m", "")
                expect(scope.locator(".ql-msg", has_text=text)).to_have_count(1)
            assert scope.locator(".ql-msg img, .ql-msg script, .ql-msg b, .ql-msg i").count() == 0
            red = scope.locator(".ql-msg .ansi-fg-1")
            expect(red).to_have_text("<b>red</b> & <i>bold</i>")
        assert page.locator("img").count() == 0
        expect(page.get_by_text('<img src=x onerror="window.__pwned = 3">').first).to_be_visible()
        assert page.evaluate("window.__pwned") is None
    assert page.errors == []


def test_permalink_scrolls_to_its_line_and_search_navigates(live, page):
    job = new_job(live, "permalink")
    post(live, [{"level": "info", "message": f"row {i + 1}" + (" needle" if i in (30, 300, 500) else ""),
                 "job_id": job, "step": "build" if i < 400 else "test"} for i in range(600)])
    page.goto(f"{live.server.url}/jobs/{job}#L120")
    target = page.locator("#L120")
    expect(target).to_be_in_viewport()
    expect(target).to_have_class(re.compile("ql-target"))
    expect(target).to_contain_text("row 120")
    # a click on another line number moves the highlight (and the URL)
    page.locator("#L125 a.ql-ln").click()
    expect(page).to_have_url(re.compile("#L125$"))
    expect(page.locator("#L125")).to_have_class(re.compile("ql-target"))
    expect(target).not_to_have_class(re.compile("ql-target"))
    # search with match navigation
    search = page.get_by_role("searchbox", name="Search the log")
    search.fill("needle")
    expect(page.get_by_text("1 of 3 matching lines")).to_be_visible()
    expect(page.locator("#L31")).to_have_class(re.compile("ql-target"))
    expect(page.locator("#L31 mark")).to_have_text("needle")
    page.get_by_role("button", name="Next match").click()
    expect(page.get_by_text("2 of 3 matching lines")).to_be_visible()
    expect(page.locator("#L301")).to_be_in_viewport()
    page.get_by_role("button", name="Previous match").click()
    page.get_by_role("button", name="Previous match").click()
    expect(page.get_by_text("3 of 3 matching lines")).to_be_visible()
    expect(page.locator("#L501")).to_be_in_viewport()
    # steps are sections that collapse
    step = page.get_by_role("button", name=re.compile("^build"))
    expect(step).to_have_attribute("aria-expanded", "true")
    step.click()
    expect(step).to_have_attribute("aria-expanded", "false")
    expect(page.locator("#L120")).to_be_hidden()
    expect(page.locator("#L501")).to_be_visible()
    assert page.errors == []


def _wait(predicate, what, timeout=30):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


def test_a_level_word_is_not_shown_twice(live, page):
    """The badge says the level; a message that starts with the same word drops it."""
    job = new_job(live, "levels", steps=["s"])
    set_status(live, job, "running")
    lines = [("error", "ERROR: it broke"), ("warn", "WARNING: careful"), ("debug", "[debug] quiet"),
             ("error", "\x1b[31mERROR: in red\x1b[0m"), ("info", "ERROR: only said by an info line")]
    post(live, [{"level": lv, "message": m, "job_id": job, "step": "s"} for lv, m in lines])
    post(live, [{"level": lv, "message": m} for lv, m in lines])
    want = [("ERROR", "it broke"), ("WARN", "careful"), ("DEBUG", "quiet"), ("ERROR", "in red"),
            ("INFO", "ERROR: only said by an info line")]
    page.goto(live.server.url + "/")
    panel = service_panel(page)
    panel.get_by_role("combobox", name=re.compile("level", re.I)).select_option("debug")
    page.goto(live.server.url + "/queue")
    page.locator("li.qrow button[aria-expanded]").first.click()
    scopes = [service_panel(page), page.locator(".qlog").first]
    for scope in scopes:
        for badge, message in want:
            line = scope.locator(".ql-line", has_text=message)
            expect(line).to_have_count(1)
            expect(line.locator(".ql-lvl")).to_have_text(badge)
            expect(line.locator(".ql-msg")).to_have_text(message)
    page.goto(f"{live.server.url}/jobs/{job}")
    for badge, message in want:
        line = page.locator(".joblog .ql-line", has_text=message)
        expect(line.locator(".ql-msg")).to_have_text(message)
        expect(line.locator(".ql-lvl")).to_have_text(badge)
    expect(page.locator(".joblog .ql-msg .ansi-fg-1")).to_have_text("in red")
    # search looks at what is shown
    page.get_by_role("searchbox").first.fill("broke")
    page.get_by_role("searchbox").first.press("Enter")
    expect(page.locator(".joblog .ql-msg mark")).to_have_text("broke")
    assert page.errors == []
