"""Search on the pages (issue 12), in real headless Chromium against a real gunicorn
server: the job page's search over the whole log, "only matching lines" while streaming,
the /search page and its links, the error counts and last errors on home and queue."""
import re

from playwright.sync_api import expect

from .helpers import new_job, post, set_status


def job_lines(page):
    return page.locator(".joblog .ql-line")


def test_job_page_search_counts_the_whole_log_and_reveals_lines_not_loaded(live, page):
    job = new_job(live, "big", steps=["s"])
    needles = {10: "needle alpha", 20: "needle beta", 2990: "needle gamma"}
    post(live, [{"level": "info", "job_id": job, "step": "s",
                 "message": needles.get(n, f"plain row {n}")} for n in range(1, 3001)])
    page.goto(f"{live.server.url}/jobs/{job}")
    expect(job_lines(page)).to_have_count(1000)          # the page holds the last 1000
    expect(page.locator("#L10")).to_have_count(0)

    search = page.get_by_role("searchbox", name="Search the log")
    search.fill("NEEDLE")                                # any case
    # the count is the whole job's, and the first match is revealed though not loaded
    expect(page.get_by_text("1 of 3 matching lines")).to_be_visible()
    first = page.locator("#L10")
    expect(first).to_be_in_viewport()
    expect(first).to_have_class(re.compile("ql-target"))
    expect(first.locator("mark")).to_have_text("needle")
    expect(page.locator("#L9")).to_contain_text("plain row 9")   # with lines around it

    search.press("ArrowDown")                             # the key, then the button
    expect(page.get_by_text("2 of 3 matching lines")).to_be_visible()
    expect(page.locator("#L20")).to_be_in_viewport()
    page.get_by_role("button", name="Next match").click()
    expect(page.get_by_text("3 of 3 matching lines")).to_be_visible()
    expect(page.locator("#L2990")).to_be_in_viewport()
    expect(page.locator("#L2990")).to_have_class(re.compile("ql-target"))
    page.get_by_role("button", name="Next match").click()  # wraps to the first
    expect(page.get_by_text("1 of 3 matching lines")).to_be_visible()
    expect(page.locator("#L10")).to_be_in_viewport()
    search.press("ArrowUp")                               # and back to the last
    expect(page.get_by_text("3 of 3 matching lines")).to_be_visible()
    expect(page.locator("#L2990")).to_be_in_viewport()

    search.fill("nowhere to be found")
    expect(page.get_by_text("No lines match")).to_be_visible()
    expect(page.get_by_role("button", name="Next match")).to_be_disabled()

    # a permalink to a line that is not loaded is loaded and highlighted
    page.goto(f"{live.server.url}/jobs/{job}#L1500")
    expect(page.locator("#L1500")).to_be_in_viewport()
    expect(page.locator("#L1500")).to_have_class(re.compile("ql-target"))
    assert page.errors == []


def test_only_matching_lines_keeps_streaming_on_the_job_page_and_service_panel(live, page):
    job = new_job(live, "grep", steps=["s"])
    set_status(live, job, "running")
    post(live, [{"level": "info", "job_id": job, "step": "s", "message": m}
                for m in ("boot ok", "disk FULL on /var", "retry", "disk full again")])
    page.goto(f"{live.server.url}/jobs/{job}")
    expect(job_lines(page)).to_have_count(4)
    page.get_by_role("searchbox", name="Search the log").fill("disk full")
    expect(page.get_by_text("1 of 2 matching lines")).to_be_visible()
    page.get_by_role("checkbox", name="Only matching lines").check()
    expect(job_lines(page)).to_have_count(2)
    expect(job_lines(page).first).to_contain_text("disk FULL on /var")
    expect(page.locator(".jobbar .conn-text")).to_have_text("connected")
    post(live, [{"level": "info", "job_id": job, "step": "s", "message": m}
                for m in ("unrelated 1", "Disk Full third time", "unrelated 2")])
    expect(job_lines(page)).to_have_count(3)
    expect(job_lines(page).last).to_contain_text("Disk Full third time")
    expect(page.get_by_text("of 3 matching lines")).to_be_visible()   # the count follows
    page.get_by_role("checkbox", name="Only matching lines").uncheck()
    expect(job_lines(page)).to_have_count(7)

    panel = page.get_by_role("region", name="Service logs")
    grep = panel.get_by_role("searchbox", name="Show only service lines containing")
    post(live, [{"level": "info", "message": "svc before"}])
    expect(panel.locator(".ql-line", has_text="svc before")).to_have_count(1)
    grep.fill("cache miss")
    expect(panel.locator(".ql-line", has_text="svc before")).to_have_count(0)
    expect(panel.get_by_role("status").first).to_have_text("connected")
    post(live, [{"level": "info", "message": "svc other"}, {"level": "warn", "message": "CACHE MISS for key"}])
    expect(panel.locator(".ql-line", has_text="CACHE MISS for key")).to_have_count(1)
    expect(panel.locator(".ql-line")).to_have_count(1)
    assert page.errors == []


def test_search_page_finds_across_jobs_and_its_links_open_the_line(live, page):
    a = new_job(live, "alpha-job", steps=["s"])
    b = new_job(live, "beta-job", steps=["s"])
    post(live, [{"level": "info", "job_id": a, "step": "s", "message": f"a row {n}"} for n in range(1, 1501)])
    post(live, [{"level": "error", "job_id": a, "step": "s", "message": "Token <b>expired</b> at gate"}])
    post(live, [{"level": "info", "job_id": b, "message": "b says token expired too"}])
    post(live, [{"level": "warn", "message": "service: token expired for user 7"}])
    post(live, [{"level": "info", "job_id": b, "message": f"filler {n}"} for n in range(60)])

    page.goto(live.server.url + "/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Search").click()
    expect(page).to_have_url(re.compile("/search$"))
    job_choice = page.get_by_role("combobox", name="Job", exact=True)
    expect(job_choice.locator("option")).to_have_count(3)    # the page's script is running
    page.get_by_role("searchbox", name="Search every log line").fill("TOKEN EXPIRED")
    page.get_by_role("button", name="Search", exact=True).click()
    results = page.get_by_role("list", name="Search results").locator("li")
    expect(results).to_have_count(2)              # "<b>expired</b>" does not contain the text
    expect(results.nth(0)).to_contain_text("service: token expired for user 7")   # newest first
    expect(results.nth(0)).to_contain_text("service log")
    expect(results.nth(1)).to_contain_text("beta-job")
    expect(results.nth(1).locator(".hit")).to_have_text("token expired")
    expect(page).to_have_url(re.compile(r"/search\?q=TOKEN\+EXPIRED"))      # a link to the search

    # markup in a message is text; the level filter; the link opens the job at its line
    page.get_by_role("searchbox", name="Search every log line").fill("<b>expired</b>")
    page.get_by_role("combobox", name="Level", exact=True).select_option("error")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("Token <b>expired</b> at gate")
    expect(results.first.locator("b")).to_have_count(0)
    results.first.get_by_role("link").click()
    expect(page).to_have_url(re.compile(f"/jobs/{a}#L1501$"))
    expect(page.locator("#L1501")).to_be_in_viewport()
    expect(page.locator("#L1501")).to_have_class(re.compile("ql-target"))

    # load more pages back through next_before; a job filter narrows it
    page.goto(live.server.url + "/search?q=filler")
    expect(results).to_have_count(50)
    expect(results.first).to_contain_text("filler 59")
    page.get_by_role("button", name="Load more").click()
    expect(results).to_have_count(60)
    expect(results.last).to_contain_text("filler 0")
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    page.goto(live.server.url + f"/search?q=row+150&job_id={b}")
    expect(page.get_by_text("No line contains")).to_be_visible()
    job_choice.select_option(a)
    page.get_by_role("button", name="Search", exact=True).click()
    expect(results).to_have_count(2)              # "a row 150" and "a row 1500"
    assert page.errors == []


def test_home_and_queue_show_error_counts_and_the_last_error(live, page):
    job = new_job(live, "flaky", steps=["s"])
    calm = new_job(live, "calm", steps=["s"])
    post(live, [{"level": "error", "job_id": job, "step": "s", "message": "first failure"},
                {"level": "info", "job_id": job, "step": "s", "message": "meanwhile"},
                {"level": "error", "job_id": job, "step": "s", "message": "connection <refused>"},
                {"level": "info", "job_id": job, "step": "s", "message": "after"},
                {"level": "info", "job_id": calm, "step": "s", "message": "all good"}])
    set_status(live, job, "failed")
    page.goto(live.server.url + "/")
    row = page.locator("table.jobs tr", has_text="flaky")
    expect(row.locator("td.has-errors")).to_have_text("2")
    last = row.get_by_role("link", name="connection <refused>")
    expect(last).to_be_visible()
    expect(page.locator("table.jobs tr", has_text="calm").locator(".last-error")).to_be_hidden()

    page.goto(live.server.url + "/queue")
    qrow = page.locator("li.qrow", has_text="flaky")
    expect(qrow.get_by_text("2 errors")).to_be_visible()
    qrow.get_by_role("link", name="connection <refused>").click()
    expect(page).to_have_url(re.compile(f"/jobs/{job}#L3$"))
    expect(page.locator("#L3")).to_have_class(re.compile("ql-target"))
    assert page.errors == []
