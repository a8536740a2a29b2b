"""Issue 15 in real Chromium: step timeline, log volume, folding, phones, keys, light and
dark, and frame times while lines stream. Viewports 1280 x 900 and 390 x 844, both colour
schemes."""
import re
import statistics
import time

import pytest
from playwright.sync_api import expect

from .helpers import TIMEOUT, new_job, post, set_status, watch_errors

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def live(module_live):
    """The module's server: each test reads its own job (the search, its own word), or
    the pages' own settings."""
    return module_live


@pytest.fixture(params=[("desktop", "light"), ("desktop", "dark"), ("phone", "light"), ("phone", "dark")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def shaped(request, browser):
    size, scheme = request.param
    ctx = browser.new_context(viewport=DESKTOP if size == "desktop" else PHONE, color_scheme=scheme,
                              is_mobile=size == "phone", has_touch=size == "phone")
    ctx.set_default_timeout(TIMEOUT)
    expect.set_options(timeout=TIMEOUT)
    pg = watch_errors(ctx.new_page())
    pg.size, pg.scheme = size, scheme
    yield pg
    ctx.close()


def busy_job(api):
    job = new_job(api, "visual", steps=("setup", "build", "test"))
    set_status(api, job, "running")
    for step in ("setup", "build"):
        set_status(api, job, "running", step=step)
        post(api, [{"level": "info", "message": f"{step} line {i}", "job_id": job, "step": step}
                   for i in range(30)])
        set_status(api, job, "completed", step=step)
    set_status(api, job, "running", step="test")
    post(api, [{"level": "info", "message": "::group::Install deps", "job_id": job, "step": "test"}]
         + [{"level": "info", "message": f"installing pkg{i}", "job_id": job, "step": "test"} for i in range(3)]
         + [{"level": "info", "message": "::endgroup::", "job_id": job, "step": "test"},
            {"level": "warn", "message": "flaky test retried", "job_id": job, "step": "test"},
            {"level": "error", "message": "assertion failed " + "x" * 400, "job_id": job, "step": "test"}])
    return job


def test_job_page_timeline_volume_folding_in_each_shape_and_scheme(live, shaped):
    page = shaped
    job = busy_job(live)
    page.goto(f"{live.server.url}/jobs/{job}")
    expect(page.locator("#L60")).to_be_attached()
    # light or dark, as the system says
    bg = page.locator(".joblog").evaluate("el => getComputedStyle(el).backgroundColor")
    lum = sum(int(x) for x in re.findall(r"\d+", bg)[:3])
    assert (lum < 200) == (page.scheme == "dark"), bg

    # the timeline: a bar per step, in status colours; a click shows the step's first line
    timeline = page.get_by_label(re.compile("timeline", re.I))
    expect(timeline).to_be_visible()
    expect(timeline.locator(".tl-bar")).to_have_count(3)
    expect(timeline.locator(".tl-bar.st-completed")).to_have_count(2)
    expect(timeline.locator(".tl-bar.st-running")).to_have_count(1)
    timeline.get_by_role("button", name=re.compile("^Step build")).click()
    expect(page.locator("#L31.ql-target")).to_be_in_viewport()

    # the log volume: an SVG naming what it counts, errors and warnings drawn apart
    vol = page.get_by_role("img", name=re.compile("Log volume: lines of this job"))
    expect(vol).to_be_visible()
    expect(vol.locator("rect.vol-error")).to_have_count(1)
    expect(vol.locator("rect.vol-warn")).to_have_count(1)

    # folding: the group is one line with a button; its lines fold and unfold
    fold = page.get_by_role("button", name=re.compile("Install deps"))
    expect(fold).to_have_attribute("aria-expanded", "false")
    expect(page.locator(".ql-line", has_text="installing pkg1")).to_be_hidden()
    expect(page.locator(".ql-line", has_text="::endgroup::")).to_be_hidden()
    fold.click()
    expect(fold).to_have_attribute("aria-expanded", "true")
    expect(page.locator(".ql-line", has_text="installing pkg1")).to_be_visible()

    # nothing scrolls sideways but the log lines (wrap off: the log does)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.get_by_role("checkbox", name="Wrap").uncheck()
    log = page.locator(".joblog")
    assert log.evaluate("el => el.scrollWidth > el.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate("[...document.querySelectorAll('.main, .jobpage, .svc, .topbar')]"
                         ".every(el => el.scrollWidth <= el.clientWidth + 1)")

    if page.size == "phone":
        # the service panel starts as one line; the job log has 60 % of the height
        panel = page.get_by_role("region", name="Service logs")
        expect(panel.get_by_role("button", name="Show")).to_have_attribute("aria-expanded", "false")
        assert panel.bounding_box()["height"] <= 48
        box = log.bounding_box()
        visible = min(box["y"] + box["height"], 844) - max(box["y"], 0)
        assert visible >= 0.6 * 844, box
    assert page.errors == []


def test_the_volume_counts_the_last_lines_once_the_job_ended(live, page):
    """Lines committed just before the job ends (after the volume's last 5-s refresh) are
    in the page's counts once it ended, without a reload."""
    job = new_job(live, "ending", steps=("s",))
    set_status(live, job, "running", step="s")
    post(live, [{"level": "info", "message": f"line {i}", "job_id": job, "step": "s"}
                for i in range(20)])
    page.goto(f"{live.server.url}/jobs/{job}")
    label = page.locator("#job-vol-label")
    expect(label).to_have_text(re.compile(r"^20 lines from "))
    post(live, [{"level": "warn", "message": "the last word", "job_id": job, "step": "s"}])
    set_status(live, job, "completed", step="s")
    set_status(live, job, "completed")
    expect(page.locator(".badge").first).to_have_text("completed")
    expect(label).to_have_text(re.compile(r"^21 lines from .*, 1 warnings$"))
    expect(page.locator(".linecount")).to_have_text("21 of 21 lines shown")
    assert page.errors == []


def test_picking_a_time_on_the_volume_shows_the_lines_from_then(live, page):
    job = new_job(live, "timed", steps=("s",))
    t = "2026-11-20T10:%02d:00.000Z"
    post(live, [{"level": "info", "message": f"minute {m}", "job_id": job, "step": "s",
                 "timestamp": t % m} for m in range(60)])
    page.goto(f"{live.server.url}/jobs/{job}")
    expect(page.locator("#L60")).to_be_attached()
    vol = page.get_by_role("img", name=re.compile("Log volume: lines of this job"))
    expect(vol.locator("rect.vol-info").first).to_be_attached()
    # by keyboard: arrows pick a bucket, Enter shows its first line
    vol.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#job-vol-label")).to_contain_text("Enter shows them")
    page.keyboard.press("Enter")
    target = page.locator(".ql-target")
    expect(target).to_be_in_viewport()
    first = int(target.locator(".ql-ln").inner_text())
    assert 2 <= first <= 4, first
    # by pointer: a brush from the middle
    box = vol.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + 10)
    page.mouse.up()
    expect(page.locator(".ql-target .ql-ln")).not_to_have_text(str(first))
    n = int(page.locator(".ql-target .ql-ln").inner_text())
    assert 28 <= n <= 33, n
    assert page.errors == []


def test_keys_and_the_help_list(live, page):
    job = new_job(live, "keys", steps=("s",))
    post(live, [{"level": "info", "message": f"line {i}" + (" needle" if i % 50 == 0 else ""),
                 "job_id": job, "step": "s"} for i in range(300)])
    page.goto(f"{live.server.url}/jobs/{job}")
    expect(page.locator("#L300")).to_be_in_viewport()
    box = page.get_by_role("searchbox", name="Search the log")
    page.locator("body").press("/")
    expect(box).to_be_focused()
    page.keyboard.type("needle")
    expect(page.get_by_text(re.compile(r"of 6 matching lines"))).to_be_visible()
    page.keyboard.press("Escape")
    expect(box).not_to_be_focused()
    label = page.locator(".matchlabel")
    expect(label).to_have_text(re.compile(r"^1 of 6 matching lines"))
    page.keyboard.press("n")
    expect(label).to_have_text(re.compile(r"^2 of 6 matching lines"))
    page.keyboard.press("n")
    expect(label).to_have_text(re.compile(r"^3 of 6 matching lines"))
    page.keyboard.press("Shift+N")
    expect(label).to_have_text(re.compile(r"^2 of 6 matching lines"))
    log = page.locator(".joblog")
    page.keyboard.press("g")
    page.wait_for_function("el => el.scrollTop === 0", arg=log.element_handle())
    follow = page.locator(".jobbar").get_by_role("checkbox", name="Auto-scroll")
    page.keyboard.press("G")
    expect(page.locator("#L300")).to_be_in_viewport()
    expect(follow).to_be_checked()
    page.keyboard.press("f")
    expect(follow).not_to_be_checked()
    page.keyboard.press("?")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("next · previous match")
    expect(dialog.get_by_role("button", name="Close")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    # the controls are reached with Tab, and the focused one shows it
    page.get_by_role("link", name="Quaero").focus()
    reached = []
    for _ in range(25):
        page.keyboard.press("Tab")
        info = page.evaluate("""() => { const el = document.activeElement; const s = getComputedStyle(el);
          return [el.getAttribute('aria-label') || el.textContent.trim().slice(0, 30) || el.tagName,
                  s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 1]; }""")
        reached.append(info[0])
        assert info[1], f"no visible focus on {info[0]}"
    assert "Dark theme" in reached or "Light theme" in reached
    assert any("Step timeline" in r or r.startswith("s") for r in reached)
    assert page.errors == []


def test_theme_toggle_and_panel_size_are_remembered(live, browser):
    ctx = browser.new_context(viewport=DESKTOP, color_scheme="light")
    page = ctx.new_page()
    page.goto(live.server.url + "/")
    html = page.locator("html")
    page.get_by_role("button", name="Dark theme").click()
    expect(html).to_have_attribute("data-theme", "dark")
    panel = page.get_by_role("region", name="Service logs")
    before = panel.bounding_box()["height"]
    sep = page.get_by_role("separator", name=re.compile("Resize the service logs"))
    sep.focus()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    page.wait_for_function(f"document.querySelector('.svc').getBoundingClientRect().height >= {before + 70}")
    box = sep.bounding_box()
    page.mouse.move(box["x"] + 50, box["y"] + 4)
    page.mouse.down()
    page.mouse.move(box["x"] + 50, box["y"] + 4 + 100)
    page.mouse.up()
    after = panel.bounding_box()["height"]
    assert before - 40 <= after <= before + 10, (before, after)
    panel.get_by_role("button", name="Hide").click()
    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")
    expect(panel.get_by_role("button", name="Show")).to_be_visible()
    panel.get_by_role("button", name="Show").click()
    assert abs(panel.bounding_box()["height"] - after) <= 2
    page.get_by_role("button", name="Light theme").click()
    page.reload()
    expect(html).to_have_attribute("data-theme", "light")
    ctx.close()


def test_search_results_have_their_volume(live, page):
    job = new_job(live, "s", steps=("a",))
    post(live, [{"level": "error", "message": "bodkin in a job", "job_id": job, "step": "a"},
                {"level": "warn", "message": "bodkin in the service log"},
                {"level": "info", "message": "hay"}])
    page.goto(live.server.url + "/search?q=bodkin")
    vol = page.get_by_role("img", name=re.compile("Log volume: matching lines"))
    expect(vol.locator("rect.vol-error")).to_have_count(1)
    expect(vol.locator("rect.vol-warn")).to_have_count(1)
    assert page.errors == []


def test_the_page_never_freezes_with_100_lines_a_second(live, page):
    """requestAnimationFrame deltas over 10 s while 100 lines/s stream into the job page:
    every line arrives and the page never stops drawing for 5 s. How smooth it is (p95 <=
    50 ms, beside its floor) is bench/frames.py's: a busy CI machine delays every frame
    whatever the page does (p95 83 ms and one frame of 1.2 s under four test workers on
    two cores; 16.7 ms and 0.3 s alone)."""
    job = new_job(live, "flood", steps=("s",))
    set_status(live, job, "running")
    set_status(live, job, "running", step="s")
    post(live, [{"level": "info", "message": f"warm {i}", "job_id": job, "step": "s"} for i in range(500)])
    page.goto(f"{live.server.url}/jobs/{job}")
    expect(page.locator("#L500")).to_be_attached()
    page.evaluate("""() => { window.__frames = []; let last = performance.now();
      const tick = (t) => { window.__frames.push(t - last); last = t;
        if (window.__frames.length < 100000) requestAnimationFrame(tick); };
      requestAnimationFrame(tick); }""")
    n = 500
    for _ in range(100):  # 1,000 lines, 10 a tenth of a second (longer if the machine is busy)
        t0 = time.monotonic()
        post(live, [{"level": "warn" if i % 10 == 0 else "info", "message": f"streamed line {n + i} " + "z" * 60,
                     "job_id": job, "step": "s"} for i in range(10)])
        n += 10
        time.sleep(max(0, 0.1 - (time.monotonic() - t0)))
    expect(page.locator(f"#L{n}")).to_be_attached()
    expect(page.locator(".linecount")).to_have_text(f"{n} of {n} lines shown")
    frames = sorted(page.evaluate("window.__frames.slice(1)"))
    print(f"\nframes: {len(frames)} in 10 s, median {statistics.median(frames):.1f} ms, "
          f"p95 {frames[int(len(frames) * 0.95)]:.1f} ms, max {frames[-1]:.1f} ms")
    assert frames[-1] < 5000, frames[-10:]
    assert page.errors == []
