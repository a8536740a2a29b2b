"""Every page usable at 1280 x 900 and on a 390 x 844 phone, light and dark (issue 21),
in real Chromium against one real gunicorn per module (the tests only read what it holds):
nothing reachable only by sideways scrolling, the controls that matter inside the window
and on top (elementFromPoint at their centre), no white rules or pale badges in the dark,
colour codes never shown raw; the styled 404, search results naming their line, the
service panel folded on the job page."""
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from playwright.sync_api import expect

from tests.helpers import ROOT, Server

from .helpers import TIMEOUT, new_job, post, set_status, watch_errors

pytestmark = pytest.mark.server     # its own server, shared by the module (conftest marks browsers slow)

TOKEN = "layout-token"
ESC = "\x1b"
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
SHAPES = [(size, scheme) for size in SIZES for scheme in ("light", "dark")]
LONG_NAME = "nightly-backup-of-the-eu-west-postgres-cluster-and-all-of-its-replicas"


# --- the site: one server, filled once -----------------------------------------------------

def fill(api):
    post(api, [{"level": "info", "message": "Quaero started; listening on 127.0.0.1"},
               {"level": "warn", "message": "needle in the service log"}])
    backup = new_job(api, LONG_NAME, steps=["snapshot", "upload"])
    for step in ("snapshot", "upload"):
        set_status(api, backup, "running", step=step)
        post(api, [{"level": "info", "message": f"{step}: {i * 12} MB done", "job_id": backup, "step": step}
                   for i in range(1, 4)])
        set_status(api, backup, "completed", step=step)
    set_status(api, backup, "completed")

    deploy = new_job(api, "deploy-eu-west", steps=["build", "push", "rollout"])
    set_status(api, deploy, "running", step="build")
    post(api, [{"level": "info", "message": "needle in a job", "job_id": deploy, "step": "build"},
               {"level": "error", "message": "push failed: 502 Bad Gateway " + "x" * 300,
                "job_id": deploy, "step": "build"}])
    set_status(api, deploy, "failed")

    tests = new_job(api, "integration-tests", steps=["setup", "unit", "browser", "report"])
    set_status(api, tests, "running")
    set_status(api, tests, "running", step="setup")
    post(api, [{"level": "info", "message": "installing 42 packages", "job_id": tests, "step": "setup"}])
    set_status(api, tests, "completed", step="setup")
    set_status(api, tests, "running", step="unit")
    post(api, [{"level": "info", "message": f"{ESC}[32mPASSED{ESC}[0m tests/test_{i:02d}.py {ESC}[2m(7 ms){ESC}[0m",
                "job_id": tests, "step": "unit"} for i in range(40)]
         + [{"level": "error", "job_id": tests, "step": "unit",
             "message": f"{ESC}[31mFAILED{ESC}[0m tests/test_edge.py::test_edge - AssertionError: 3 != 4"}]
         + [{"level": "info", "message": "a long line " + "abcdefghij" * 30, "job_id": tests, "step": "unit"}])
    return SimpleNamespace(backup=backup, deploy=deploy, tests=tests)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout")
    shutil.copytree(Path(ROOT) / "jobs", tmp / "jobs")      # the demo definition: a Run button
    srv = Server(tmp, env={"QUAERO_API_TOKEN": TOKEN, "QUAERO_PING_INTERVAL": "1"}).start()
    api = httpx.Client(base_url=srv.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        ids = fill(api)
        yield SimpleNamespace(url=srv.url, api=api, **vars(ids))
    finally:
        api.close()
        srv.stop()


@pytest.fixture(scope="module")
def signed_in(site, browser):
    """The cookies of a session logged in through the login page, for every context."""
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(site.url + "/login")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(site.url + "/")
    state = ctx.storage_state()
    ctx.close()
    return state


def new_context(browser, size, scheme, state=None):
    phone = size == "phone"
    ctx = browser.new_context(viewport=SIZES[size], color_scheme=scheme, is_mobile=phone, has_touch=phone,
                              storage_state=state)
    ctx.set_default_timeout(TIMEOUT)
    expect.set_options(timeout=TIMEOUT)
    return ctx


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}-{s[1]}")
def shape(request, browser, signed_in):
    size, scheme = request.param
    ctx = new_context(browser, size, scheme, signed_in)
    ctx.size, ctx.scheme = size, scheme
    yield ctx
    ctx.close()


@pytest.fixture
def shaped(shape):
    page = watch_errors(shape.new_page())
    page.size, page.scheme = shape.size, shape.scheme
    yield page
    page.close()


# --- the checks ------------------------------------------------------------------------------

SIDEWAYS = """() => {
  const W = window.innerWidth, out = [];
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (typeof el.className === 'string' && el.className ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  const clips = (el) => getComputedStyle(el).overflowX !== 'visible';
  const se = document.scrollingElement;
  if (se.scrollWidth > W) out.push(`the page is ${se.scrollWidth} px wide in ${W}`);
  for (const el of document.body.querySelectorAll('*')) {
    if (el.ownerSVGElement || el.closest('.skip-link')) continue;
    const cs = getComputedStyle(el);
    if (cs.display === 'none' || cs.visibility === 'hidden') continue;
    const r = el.getBoundingClientRect();
    if (r.width <= 2 || r.height <= 2) continue;          // nothing, or visually hidden for readers
    if (clips(el) && cs.textOverflow !== 'ellipsis' && el.scrollWidth > el.clientWidth + 1)
      out.push(`${name(el)} scrolls sideways: ${el.scrollWidth} > ${el.clientWidth}`);
    let clipped = false;
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) if (clips(p)) { clipped = true; break; }
    if (!clipped && (r.right > W + 1 || r.left < -1))
      out.push(`${name(el)} spans ${Math.round(r.left)}..${Math.round(r.right)} of ${W}`);
  }
  return out;
}"""

# a control inside the window once scrolled to (vertically: nothing may scroll sideways), and
# on top: the element at its centre is the control or inside it
REACHABLE = """(el, scroll) => {
  if (scroll) el.scrollIntoView({block: 'center', inline: 'nearest'});
  const r = el.getBoundingClientRect();
  const first = el.getClientRects()[0];              // a link over two lines: its first
  const x = first.left + first.width / 2, y = first.top + first.height / 2;
  const hit = document.elementFromPoint(x, y);
  let sideways = window.scrollX;
  for (let p = el.parentElement; p; p = p.parentElement) sideways += p.scrollLeft;
  return {inside: r.left >= 0 && r.right <= window.innerWidth && r.top >= 0 && r.bottom <= window.innerHeight,
          onTop: !!hit && (hit === el || el.contains(hit)), sideways,
          box: [Math.round(r.left), Math.round(r.top), Math.round(r.right), Math.round(r.bottom)],
          hit: hit ? hit.outerHTML.slice(0, 120) : null};
}"""

# in the dark: no light borders (the tables' white rules) and no light backgrounds (pale badges)
DARK = """() => {
  const lum = (c) => { const m = c.match(/[\\d.]+/g); if (!m || (m.length > 3 && +m[3] === 0)) return 0;
    const [r, g, b] = m.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) * (m.length > 3 ? +m[3] : 1); };
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.ownerSVGElement) continue;
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height) continue;
    const cs = getComputedStyle(el);
    if (cs.visibility === 'hidden') continue;
    for (const side of ['Top', 'Right', 'Bottom', 'Left']) {
      const colour = cs['border' + side + 'Color'];
      if (parseFloat(cs['border' + side + 'Width']) > 0 && cs['border' + side + 'Style'] !== 'none' &&
          colour !== cs.color && lum(colour) > 0.45)        // the text's colour: a drawn caret
        out.push(`${el.tagName} ${el.className} border-${side} ${cs['border' + side + 'Color']}`);
    }
    if (lum(cs.backgroundColor) > 0.45) out.push(`${el.tagName} ${el.className} background ${cs.backgroundColor}`);
  }
  return out;
}"""

RAW_ANSI = re.compile(r"\x1b|\[[0-9;]*m\b")


def assert_usable(page, controls, scroll=True):
    """Nothing sticks out sideways; every control reachable; in the dark nothing pale; no
    colour code shown as text."""
    problems = page.evaluate(SIDEWAYS)
    assert problems == [], f"{page.size}-{page.scheme} {page.url}: {problems[:8]}"
    for control in controls:
        expect(control).to_be_visible()
        where = control.evaluate(REACHABLE, scroll)
        assert where["inside"] and where["onTop"] and where["sideways"] == 0, \
            f"{page.size}-{page.scheme} {page.url}: {control} {where}"
    if page.scheme == "dark":
        pale = page.evaluate(DARK)
        assert pale == [], f"{page.size} {page.url}: {pale[:8]}"
    text = page.evaluate("document.body.innerText + [...document.querySelectorAll('[title]')]"
                         ".map(e => e.title).join(' ')")
    assert not RAW_ANSI.search(text), RAW_ANSI.search(text)


def nav(page):
    bar = page.locator("header.topbar")
    return [bar.get_by_role("link", name=n, exact=True) for n in ("Home", "Queue", "Search")] + [
        bar.get_by_role("button", name=re.compile("^(Dark|Light) theme$")),
        bar.get_by_role("button", name="Keyboard shortcuts"), bar.get_by_role("button", name="Log out")]


# --- each page, each shape ------------------------------------------------------------------

def test_home(site, shaped):
    page = shaped
    page.goto(site.url + "/")
    rows = page.locator("table.jobs tbody tr")
    expect(rows).to_have_count(3)
    run = page.get_by_role("button", name="Run demo")
    # the last error as text: its colour codes dropped, its line in the title
    last = rows.filter(has_text="integration-tests").locator(".last-error")
    expect(last).to_have_text("FAILED tests/test_edge.py::test_edge - AssertionError: 3 != 4")
    expect(last).to_have_attribute("title", re.compile(r"^Last error, line 42: FAILED tests/test_edge\.py"))
    running = page.locator(".jobitem", has_text="integration-tests").locator(".last-error")
    expect(running).to_have_text("FAILED tests/test_edge.py::test_edge - AssertionError: 3 != 4")
    assert_usable(page, nav(page) + [
        run, running, last, rows.first.get_by_role("link").first,
        rows.filter(has_text=LONG_NAME).get_by_role("link", name=LONG_NAME),
        page.get_by_role("link", name="All jobs in the queue"),
        page.get_by_role("region", name="Service logs").get_by_role("button", name=re.compile("^(Show|Hide)$"))])
    assert page.errors == []


def test_queue(site, shaped):
    page = shaped
    page.goto(site.url + "/queue")
    rows = page.locator("li.qrow")
    expect(rows).to_have_count(3)
    row = rows.filter(has_text="integration-tests")
    row.get_by_role("button", name="integration-tests").click()
    expect(row.locator(".qlog .ql-line")).to_have_count(43)
    expect(row.locator(".last-error")).to_have_text("FAILED tests/test_edge.py::test_edge - AssertionError: 3 != 4")
    controls = [page.get_by_role("combobox", name="Status")]
    for r in range(3):
        controls += [rows.nth(r).locator("button.expander"), rows.nth(r).get_by_role("link", name=re.compile("^Full log"))]
    controls += [row.get_by_role("button", name="Clear"), row.locator(".qlog").get_by_role("combobox")]
    assert_usable(page, nav(page) + controls)
    assert page.errors == []


def test_job_page(site, shaped):
    page = shaped
    page.goto(f"{site.url}/jobs/{site.tests}")
    expect(page.locator("#L42")).to_be_attached()
    timeline = page.get_by_label("Step timeline")
    steps = timeline.get_by_role("button")
    expect(steps).to_have_count(4)
    # every step shown at once, none under the volume chart: on top where they are, unscrolled
    assert timeline.evaluate("el => el.scrollHeight <= el.clientHeight + 1")
    assert_usable(page, [steps.nth(i) for i in range(4)], scroll=False)
    # the service panel starts folded to its bar here, on every screen
    panel = page.get_by_role("region", name="Service logs")
    show = panel.get_by_role("button", name="Show")
    expect(show).to_have_attribute("aria-expanded", "false")
    assert panel.bounding_box()["height"] <= 60
    assert_usable(page, nav(page) + [
        page.get_by_role("button", name="Cancel"), page.get_by_role("button", name="Rerun"),
        page.get_by_role("link", name="Download"), page.get_by_role("searchbox", name="Search the log"),
        page.get_by_role("button", name="Next match"), page.get_by_role("checkbox", name="Wrap"),
        page.locator(".jobbar").get_by_role("combobox"), show])
    steps.nth(3).click()                       # the 4th step: pending, no lines yet; it answers
    expect(page.get_by_role("status").filter(has_text="Step report has no lines")).to_be_visible()
    assert page.errors == []


def test_search_page(site, shaped):
    page = shaped
    page.goto(site.url + "/search?q=needle")
    results = page.get_by_role("list", name="Search results").get_by_role("listitem")
    expect(results).to_have_count(2)
    # a result names its line as a line
    links = results.get_by_role("link")
    expect(links).to_have_text(["deploy-eu-west · line 1", re.compile(r"^service log · line \d+$")])
    assert_usable(page, nav(page) + [
        page.get_by_role("searchbox", name="Search every log line"),
        page.get_by_role("button", name="Search", exact=True), page.get_by_role("combobox", name="Job"),
        links.first, links.last])
    assert page.errors == []


def test_not_found_page(site, shaped):
    page = shaped
    for path, heading in (("/no/such/page", "Page not found"), ("/jobs/0000", "Job not found")):
        response = page.goto(site.url + path)
        assert response.status == 404
        expect(page.get_by_role("heading", level=1)).to_have_text(heading)
        expect(page).to_have_title("Not found · Quaero")
        # the site's layout: its stylesheet, its bar; nothing from Werkzeug
        assert page.locator("header.topbar").is_visible()
        assert "Times" not in page.evaluate("getComputedStyle(document.body).fontFamily")
        assert "The requested URL was not found" not in page.content()
        assert_usable(page, nav(page) + [page.get_by_role("link", name="The queue"),
                                         page.get_by_role("link", name="Search every log")])
    # the console names the page's own 404; nothing else goes wrong
    assert [e for e in page.errors if "status of 404" not in e] == []


@pytest.mark.parametrize("size,scheme", SHAPES, ids=[f"{a}-{b}" for a, b in SHAPES])
def test_login_page(site, browser, size, scheme):
    ctx = new_context(browser, size, scheme)
    page = ctx.new_page()
    page.size, page.scheme = size, scheme
    page.goto(site.url + "/queue")
    expect(page).to_have_url(re.compile("/login"))
    page.get_by_label("API token").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
    assert_usable(page, [page.get_by_label("API token"), page.get_by_role("button", name="Log in")])
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(site.url + "/queue")
    ctx.close()


# --- what is not about the shape --------------------------------------------------------------

def test_api_paths_keep_their_json_404_and_pages_get_theirs(site):
    for path in ("/api/nope", "/v1/nope", "/api/jobs/nope/steps/x/nope"):
        r = site.api.get(path)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json", (path, r.text)
        assert r.json() == {"error": "not found"}
    r = site.api.get("/api/jobs/0000")
    assert r.status_code == 404 and r.json() == {"error": "job not found"}
    r = site.api.get("/no/such/page")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "Page not found" in r.text and "Content-Security-Policy" in r.headers
    assert "&lt;script&gt;" in site.api.get("/<script>x").text        # the path is text
    # another error of a page (a method it does not take): styled too, and says what it allows
    r = site.api.post("/search")
    assert r.status_code == 405 and "Method Not Allowed" in r.text and "topbar" in r.text
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "HEAD"}
    r = site.api.delete("/api/jobs")
    assert r.status_code == 405 and r.json() == {"error": "method not allowed"}


def test_the_job_page_remembers_an_opened_panel_apart_from_the_other_pages(site, browser, signed_in):
    ctx = new_context(browser, "desktop", "light", signed_in)
    page = ctx.new_page()
    page.goto(f"{site.url}/jobs/{site.tests}")
    panel = page.get_by_role("region", name="Service logs")
    panel.get_by_role("button", name="Show").click()
    expect(panel.locator(".ql-line", has_text="needle in the service log")).to_be_visible()
    page.reload()
    expect(panel.get_by_role("button", name="Hide")).to_have_attribute("aria-expanded", "true")
    panel.get_by_role("button", name="Hide").click()
    page.goto(site.url + "/")                  # the other pages keep theirs: open
    expect(panel.get_by_role("button", name="Hide")).to_be_visible()
    page.goto(f"{site.url}/jobs/{site.tests}")
    expect(panel.get_by_role("button", name="Show")).to_be_visible()
    ctx.close()
