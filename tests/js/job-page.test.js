"use strict";
// The job page's component (job-page.js with its search) in node: just enough DOM for its
// LogView, a scroller with the browser's geometry and scroll events, a fake /api/logs over
// one job of 3000 lines, and Alpine's $nextTick as a queue the test runs when it chooses.
const test = require("node:test");
const assert = require("node:assert/strict");
const { settle } = require("./helpers.js");

const LINE_H = 20;

class FakeNode {
  constructor(tag) {
    this.tagName = String(tag || "").toUpperCase();
    this.children = [];
    this.parentNode = null;
    this.className = "";
    this.style = {};
    this.attrs = {};
    this._text = "";
  }
  get classList() {
    const el = this;
    const names = () => el.className.split(/\s+/).filter(Boolean);
    return {
      contains: (c) => names().includes(c),
      add: (...cs) => { el.className = Array.from(new Set(names().concat(cs))).join(" "); },
      remove: (...cs) => { el.className = names().filter((n) => !cs.includes(n)).join(" "); },
      toggle: (c, on) => {
        if (on === undefined) on = !names().includes(c);
        if (on) el.classList.add(c); else el.classList.remove(c);
      }
    };
  }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getAttribute(k) { return k in this.attrs ? this.attrs[k] : null; }
  addEventListener() {}
  querySelector() { return null; }
  querySelectorAll() { return []; }
  appendChild(child) { return this.insertBefore(child, null); }
  insertBefore(child, ref) {
    const kids = child.fragment ? child.children.splice(0) : [child];
    kids.forEach((k) => { if (k.parentNode) k.remove(); k.parentNode = this; });
    const at = ref ? this.children.indexOf(ref) : -1;
    if (at < 0) this.children.push(...kids); else this.children.splice(at, 0, ...kids);
    return child;
  }
  remove() {
    if (!this.parentNode) return;
    const kids = this.parentNode.children;
    kids.splice(kids.indexOf(this), 1);
    this.parentNode = null;
  }
  get firstChild() { return this.children[0] || null; }
  get lastChild() { return this.children[this.children.length - 1] || null; }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
  set textContent(text) {
    this.children.forEach((c) => { c.parentNode = null; });
    this.children = [];
    this._text = String(text);
  }
  scrollIntoView() { if (FakeScroller.current) FakeScroller.current.show(this); }
}

/** The log's scroll box: one line is LINE_H px high. As in a browser, a window shorter than
 * the last pulls scrollTop down to its new bottom, and the scroll event comes with the next
 * frame (`frame()`), after the script that moved it and before a timer the script set. */
class FakeScroller {
  constructor(lines) {
    this.lines = lines;
    this.clientHeight = 600;
    this.top = 0;
    this.seen = 0;
    this.listeners = [];
    FakeScroller.current = this;
  }
  get scrollHeight() { return Math.max(this.clientHeight, this.lines.children.length * LINE_H); }
  get scrollTop() { return Math.max(0, Math.min(this.top, this.scrollHeight - this.clientHeight)); }
  set scrollTop(v) { this.top = v; this.top = this.scrollTop; }
  addEventListener(name, fn) { if (name === "scroll") this.listeners.push(fn); }
  show(el) {
    const i = this.lines.children.indexOf(el);
    if (i >= 0) this.scrollTop = i * LINE_H - this.clientHeight / 2;
  }
  frame() {
    const top = this.scrollTop;
    if (top === this.seen) return;
    this.seen = top;
    this.listeners.forEach((fn) => fn());
  }
  scrollToEnd() { this.scrollTop = this.scrollHeight; this.frame(); }
  shows(n) {
    const i = this.lines.children.findIndex((el) => el.id === "L" + n);
    return i >= 0 && i * LINE_H >= this.scrollTop && (i + 1) * LINE_H <= this.scrollTop + this.clientHeight;
  }
}

globalThis.document = {
  createElement: (tag) => new FakeNode(tag),
  createElementNS: (ns, tag) => new FakeNode(tag),
  createDocumentFragment: () => Object.assign(new FakeNode("#fragment"), { fragment: true }),
  createTextNode: (text) => Object.assign(new FakeNode("#text"), { _text: String(text) }),
  querySelector: () => null,
  getElementById: () => null
};
globalThis.location = { hash: "", search: "", pathname: "/jobs/j" };
globalThis.addEventListener = () => {};
const P = require("../../static/js/job-page.js");

/** /api/logs over lines 1..total (id = line number), `needles` by line number. */
function logsApi(total, needles) {
  const all = [];
  for (let n = 1; n <= total; n++) {
    all.push({ id: n, line_number: n, level: "info", timestamp: "2026-11-26T10:30:45.123Z",
      message: needles[n] || "plain row " + n, job_id: "j", step_name: "s" });
  }
  const asked = [];
  const fetch = (url) => {
    asked.push(url);
    const p = new URL(url, "http://x").searchParams;
    const q = (p.get("q") || "").toLowerCase();
    let lines = q ? all.filter((l) => l.message.toLowerCase().includes(q)) : all;
    if (p.get("step")) lines = lines.filter((l) => l.step_name === p.get("step"));
    const limit = Number(p.get("limit"));
    let page;
    let more;
    if (p.has("after")) {
      const rest = lines.filter((l) => l.id > Number(p.get("after")));
      page = rest.slice(0, limit);
      more = rest.length > limit;
    } else {
      const rest = p.has("before") ? lines.filter((l) => l.id < Number(p.get("before"))) : lines;
      page = limit ? rest.slice(-limit) : [];
      more = rest.length > page.length;
    }
    const body = { logs: page, meta: { total_count: lines.length, has_more: more } };
    return Promise.resolve({ status: 200, ok: true, json: () => Promise.resolve(body) });
  };
  return { fetch, asked, tail: all.slice(-1000) };
}

/** The component after its first 1000 lines (of 3000) came in, scrolled to the bottom. */
function jobPage() {
  const api = logsApi(3000, { 10: "needle alpha", 20: "needle beta", 2990: "needle gamma" });
  globalThis.fetch = api.fetch;
  const lines = new FakeNode("div");
  const scroller = new FakeScroller(lines);
  const ticks = [];
  const c = P.jobLogPage("j", { job: { id: "j", status: "running", steps: [{ name: "s", status: "running" }] } });
  Object.assign(c, {
    $refs: { scroller, lines }, $root: new FakeNode("div"), $watch() {}, $dispatch() {},
    $nextTick: (fn) => new Promise((resolve) => ticks.push(() => { fn(); resolve(); }))
  });
  c.init();
  ticks.length = 0;                       // connect(): the test hands the lines in itself
  c.onLines(api.tail, { total_count: 3000, has_more: true }, { backfill: true });
  scroller.frame();
  // Alpine's $nextTick runs from a timer: a frame (and its scroll event) may come first
  const tick = () => { while (ticks.length) ticks.shift()(); };
  return { c, api, scroller, tick };
}

const tailAsked = (api) => api.asked.filter((u) => /[?&]limit=1000(&|$)/.test(u) && !/after=|before=/.test(u));

const ways = {
  "a search match": (c) => { c.query = "NEEDLE"; c.search(); },
  "a permalink": (c) => { globalThis.location.hash = "#L10"; c.gotoHash(); },
  "a step's first line": (c) => c.jumpToStep("s")
};

for (const [way, go] of Object.entries(ways)) {
  test(`${way} not loaded stays shown though the new window's scroll event comes before the reveal`, async (t) => {
    const { c, api, scroller, tick } = jobPage();
    t.after(() => { c.destroy(); globalThis.location.hash = ""; });
    assert.equal(scroller.scrollTop, 1000 * LINE_H - 600);
    go(c);
    await settle(20);
    const target = way === "a step's first line" ? 1 : 10;
    assert.ok(c.lineCount > 0 && c.detached, "the lines around it are loaded, newer ones not");
    // the window is shorter: the scroller sits at its bottom; its scroll event comes now
    assert.equal(scroller.scrollTop, scroller.scrollHeight - scroller.clientHeight);
    scroller.frame();
    await settle(5);
    tick();
    scroller.frame();                     // the reveal's own scroll event
    await settle(5);
    assert.deepEqual(tailAsked(api), [], "jumped to the latest lines");
    assert.ok(scroller.shows(target), `#L${target} is in view`);
    assert.equal(c.locating, false);
    assert.equal(c.paused, true);
    if (way === "a search match") assert.equal(c.matchLabel, "1 of 3 matching lines");

    // the reader scrolls to the bottom of the window: the latest lines, following again
    scroller.scrollToEnd();
    await settle(10);
    tick();
    assert.equal(tailAsked(api).length, 1);
    assert.equal(c.detached, false);
    assert.equal(c.lineCount, 1000);
    assert.ok(scroller.shows(3000));
  });
}
