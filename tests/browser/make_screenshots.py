"""Screenshots of each page with some data, into docs/screenshots/.

    /work/venv/bin/python -m tests.browser.make_screenshots [OUT_DIR]

OUT_DIR defaults to docs/screenshots/ (docs/screenshots/before/ holds the pages as they
were before issue 15). Every page (home, queue, a job, search, a 404, login) at 1280 x 900
and on a 390 x 844 phone, in the light and the dark colour scheme:
``{page}[-phone][-dark].png`` (``home-defs-phone*.png``: the phone's home page scrolled to
the definitions); then a job searched, a failed job and the demo running.
Starts its own gunicorn servers (one open, one with a token for the login page) on
temporary databases, fills them through the API and photographs the pages in Debian's
Chromium. Not a test; run it after changing how the pages look.
"""
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import httpx  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser.conftest import ARGS, CHROMIUM, new_job, post, set_status  # noqa: E402
from tests.helpers import ROOT, Server  # noqa: E402

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(ROOT) / "docs" / "screenshots"
ESC = "\x1b"


def fill(api):
    post(api, [{"level": "info", "message": "Quaero started; listening on 127.0.0.1"},
               {"level": "debug", "message": "database: sqlite, WAL mode"}])
    backup = new_job(api, "nightly-backup", steps=["snapshot", "upload", "verify"])
    set_status(api, backup, "running")
    for step in ("snapshot", "upload", "verify"):
        set_status(api, backup, "running", step=step)
        post(api, [{"level": "info", "message": f"{step}: {i * 12} MB done", "job_id": backup, "step": step}
                   for i in range(1, 6)])
        set_status(api, backup, "completed", step=step)
    set_status(api, backup, "completed")

    deploy = new_job(api, "deploy-eu-west", steps=["build", "push", "rollout"])
    set_status(api, deploy, "running")
    set_status(api, deploy, "running", step="build")
    post(api, [{"level": "info", "message": "building image quaero:1.4.2", "job_id": deploy, "step": "build"}])
    set_status(api, deploy, "completed", step="build")
    set_status(api, deploy, "running", step="push")
    post(api, [{"level": "warn", "message": "registry slow to answer, retrying (1/3)", "job_id": deploy, "step": "push"},
               {"level": "error", "message": "push failed: 502 Bad Gateway", "job_id": deploy, "step": "push"}])
    set_status(api, deploy, "failed")

    tests = new_job(api, "integration-tests", steps=["setup", "unit", "browser", "report"])
    set_status(api, tests, "running")
    set_status(api, tests, "running", step="setup")
    post(api, [{"level": "debug", "message": "python 3.13, node 20", "job_id": tests, "step": "setup"},
               {"level": "info", "message": "installing 42 packages", "job_id": tests, "step": "setup"}])
    set_status(api, tests, "completed", step="setup")
    set_status(api, tests, "running", step="unit")
    lines = []
    for i in range(1, 61):
        name = f"tests/test_module_{i:02d}.py"
        if i % 17 == 0:
            lines.append({"level": "error", "message": f"{ESC}[31mFAILED{ESC}[0m {name}::test_edge_case - AssertionError: 3 != 4"})
        elif i % 9 == 0:
            lines.append({"level": "warn", "message": f"{ESC}[33mWARN{ESC}[0m {name}: DeprecationWarning: utcnow() is deprecated"})
        else:
            lines.append({"level": "info", "message": f"{ESC}[32mPASSED{ESC}[0m {name} {ESC}[2m({i * 7 % 90} ms){ESC}[0m"})
    for line in lines:
        line.update(job_id=tests, step="unit")
    post(api, lines)
    post(api, [{"level": "info", "message": f"{ESC}[1mcollected 1,204 items{ESC}[0m", "job_id": tests, "step": "unit"}])
    post(api, [{"level": "warn", "message": "disk usage at 81% on /var/lib/quaero"},
               {"level": "info", "message": "service log: retention pruned 12,480 lines"}])
    return backup, deploy, tests


SIZES = {"": {"width": 1280, "height": 900}, "-phone": {"width": 390, "height": 844}}
SCHEMES = ("light", "dark")


def shape_page(browser, size, scheme):
    """A page of one size and colour scheme: `{name}{size}{-dark}.png`."""
    phone = size == "-phone"
    page = browser.new_page(viewport=SIZES[size], color_scheme=scheme, is_mobile=phone, has_touch=phone)
    page.suffix = size + ("-dark" if scheme == "dark" else "")
    return page


def every_shape(browser, srv, auth, tests, deploy):
    """Each page at 1280 x 900 and 390 x 844, light and dark: {page}[-phone][-dark].png."""
    for size in SIZES:
        for scheme in SCHEMES:
            page = shape_page(browser, size, scheme)
            sfx = page.suffix
            page.goto(srv.url + "/")
            expect(page.get_by_role("link", name="integration-tests").first).to_be_visible()
            expect(page.get_by_role("button", name="Run demo")).to_be_attached()
            time.sleep(1)
            page.screenshot(path=str(OUT / f"home{sfx}.png"))
            if size == "-phone":       # the rest of the home page: the definitions and their Run
                page.get_by_role("button", name="Run demo").scroll_into_view_if_needed()
                time.sleep(0.3)
                page.screenshot(path=str(OUT / f"home-defs{sfx}.png"))

            page.goto(srv.url + "/queue")
            page.locator("li.qrow", has_text="integration-tests").locator("button[aria-expanded]").click()
            expect(page.locator(".qlog .ql-line").first).to_be_visible()
            time.sleep(1.5)
            page.screenshot(path=str(OUT / f"queue{sfx}.png"))

            page.goto(f"{srv.url}/jobs/{tests}")
            expect(page.locator("#L20")).to_be_attached()
            time.sleep(1.5)
            page.screenshot(path=str(OUT / f"job{sfx}.png"))

            page.goto(f"{srv.url}/search?q=test_module_1")
            expect(page.locator(".result").first).to_be_visible()
            time.sleep(1)
            page.screenshot(path=str(OUT / f"search{sfx}.png"))

            page.goto(srv.url + "/no/such/page")
            time.sleep(0.5)
            page.screenshot(path=str(OUT / f"404{sfx}.png"))

            page.goto(auth.url + "/")
            page.get_by_label("API token").fill("wrong")
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("alert")).to_be_visible()
            page.screenshot(path=str(OUT / f"login{sfx}.png"))
            page.close()


def main():
    if not os.path.exists(CHROMIUM):
        sys.exit(f"{CHROMIUM} is not installed")
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="quaero-shots-"))
    if (Path(ROOT) / "jobs").is_dir():        # the demo definitions, for the Run buttons
        shutil.copytree(Path(ROOT) / "jobs", tmp / "jobs")
    srv = Server(tmp).start()
    auth_tmp = tmp / "auth"
    auth_tmp.mkdir()
    auth = Server(auth_tmp, env={"QUAERO_API_TOKEN": "screenshot-token"}).start()
    try:
        api = httpx.Client(base_url=srv.url, timeout=30)
        backup, deploy, tests = fill(api)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            every_shape(browser, srv, auth, tests, deploy)
            page = browser.new_page(viewport=SIZES[""])
            page.goto(f"{srv.url}/jobs/{tests}#L20")
            expect(page.locator("#L20")).to_be_in_viewport()
            page.get_by_role("searchbox", name="Search the log").fill("deprecat")
            expect(page.get_by_text(re_text("of 6 matching lines"))).to_be_visible()
            post(api, [{"level": "info", "message": f"{ESC}[32mPASSED{ESC}[0m tests/test_live.py (streamed)",
                        "job_id": tests, "step": "unit"}])
            time.sleep(1.5)
            page.screenshot(path=str(OUT / "job-search.png"))

            page.goto(f"{srv.url}/jobs/{deploy}")
            expect(page.locator("#L3")).to_be_visible()
            time.sleep(1)
            page.screenshot(path=str(OUT / "job-failed.png"))

            demo = api.post("/api/jobs", json={"definition": "demo"})
            if demo.status_code == 201:
                page.goto(f"{srv.url}/jobs/{demo.json()['id']}")
                expect(page.locator(".stephead").get_by_role("button", name=re.compile("^trickle.*running"))).to_be_visible(timeout=30000)
                time.sleep(4)
                page.screenshot(path=str(OUT / "job-demo-running.png"))
            browser.close()
    finally:
        srv.stop()
        auth.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(sorted(str(p) for p in OUT.glob("*.png"))))


def re_text(text):
    return re.compile(re.escape(text))


if __name__ == "__main__":
    main()
