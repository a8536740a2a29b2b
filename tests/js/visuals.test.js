// Issue 15's pure parts: histogram bars, time bisection, timeline, group markers, keys,
// and the WCAG AA contrast of the log colours in both themes (read from the stylesheet).
const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const Vol = require("../../static/js/log-volume.js");
const JV = require("../../static/js/job-visuals.js");
const G = require("../../static/js/log-groups.js");
const K = require("../../static/js/page-keys.js");

const b = (info, warn, error) => ({ start: "s", end: "e", counts: { debug: 0, info, warn, error } });

test("histogram bars stack errors and warnings on top, scaled to the fullest bucket", () => {
  const bars = Vol.histogramBars([b(8, 1, 1), b(0, 0, 0), b(4, 0, 0)], 300, 42);
  assert.deepEqual(bars.map((r) => [r.bucket, r.level]), [[0, "info"], [0, "warn"], [0, "error"], [2, "info"]]);
  const [info, warn, error] = bars;
  assert.equal(info.h, 32);                        // 8 of 10 lines, of 40 px
  assert.ok(warn.y + warn.h === info.y && error.y + error.h === warn.y);
  assert.equal(bars[3].x, 200);
  assert.equal(bars[3].h, 16);
  assert.deepEqual(Vol.histogramBars([], 10, 10), []);
});

test("bucketAt and rangeOf", () => {
  assert.equal(Vol.bucketAt(0, 600, 60), 0);
  assert.equal(Vol.bucketAt(599.9, 600, 60), 59);
  assert.equal(Vol.bucketAt(700, 600, 60), 59);
  assert.equal(Vol.bucketAt(-5, 600, 60), 0);
  const bs = [{ start: "a", end: "b" }, { start: "b", end: "c" }, { start: "c", end: "d" }];
  assert.deepEqual(Vol.rangeOf(bs, 2, 1), { start: "b", end: "d" });
});

test("bisectTime finds the first line at or after a time in log2 probes", async () => {
  const lines = [];
  for (let i = 1; i <= 1000; i++) lines.push({ id: i * 3, timestamp: new Date(1e12 + i * 1000).toISOString() });
  let probes = 0;
  const probe = (after) => { probes++; return Promise.resolve(lines.find((l) => l.id > after) || null); };
  const hit = await Vol.bisectTime(probe, 1e12 + 500500, 3001);
  assert.equal(hit.id, 501 * 3);
  assert.ok(probes <= 14, probes);
  assert.equal(await Vol.bisectTime(probe, 1e12 + 5e6, 3001), null);
});

// logVolume with just enough DOM to draw into, and a fetch whose answers the test releases
function volumeHarness(live) {
  const node = () => ({ setAttribute() {}, appendChild() {}, textContent: "" });
  const asked = [];
  const saved = { document: globalThis.document, fetch: globalThis.fetch };
  globalThis.document = { createElementNS: node, createDocumentFragment: node };
  globalThis.fetch = (url) => new Promise((resolve) => asked.push({ url, answer: (lines, warn) => resolve({
    status: 200, ok: true,
    json: () => Promise.resolve({ total: lines, buckets: [{ start: "2026-01-01T00:00:00.000Z",
      end: "2026-01-01T00:00:10.000Z", counts: { debug: 0, info: lines - warn, warn, error: 0 } }] })
  }) }));
  const v = Vol.logVolume({ query: () => "scope=job&job_id=j", live: () => live.now });
  v.$refs = { svg: node() };
  const restore = () => { globalThis.document = saved.document; globalThis.fetch = saved.fetch; };
  return { v, asked, restore };
}

const until = async (ok) => {
  for (let i = 0; i < 100 && !ok(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(ok());
};

test("the log volume is drawn once more when the job ends: its last lines are counted", async () => {
  const live = { now: true };
  const { v, asked, restore } = volumeHarness(live);
  try {
    v.watch("scope=job&job_id=j");                 // the page opens on the running job
    await until(() => asked.length === 1);
    asked[0].answer(5070, 21);
    await until(() => v.total === 5070);
    assert.match(v.label, /^5070 lines .*, 21 warnings$/);
    live.now = false;                               // a warning, then the job ends
    v.watch("scope=job&job_id=j");                  // the page's effect: the job changed
    await until(() => asked.length === 2);
    asked[1].answer(5071, 22);
    await until(() => v.total === 5071);
    assert.match(v.label, /^5071 lines .*, 22 warnings$/);
    v.watch("scope=job&job_id=j");                  // ended already: nothing more to ask
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(asked.length, 2);
  } finally {
    restore();
  }
});

test("an older histogram answer that arrives last does not replace a newer one", async () => {
  const { v, asked, restore } = volumeHarness({ now: true });
  try {
    v.refresh();                                    // a 5-s tick, before the last lines
    v.refresh();                                    // the job's end
    assert.equal(asked.length, 2);
    asked[1].answer(5071, 22);
    await until(() => v.total === 5071);
    asked[0].answer(5070, 21);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(v.total, 5071);
    assert.match(v.label, /22 warnings$/);
  } finally {
    restore();
  }
});

test("timeline bars on the job's time axis, running steps to now", () => {
  const job = { steps: [
    { name: "a", status: "completed", started_at: "2026-01-01T00:00:00.000Z", finished_at: "2026-01-01T00:00:10.000Z" },
    { name: "b", status: "running", started_at: "2026-01-01T00:00:10.000Z", finished_at: null },
    { name: "c", status: "pending", started_at: null, finished_at: null }] };
  const now = Date.parse("2026-01-01T00:00:40.000Z");
  const t = JV.timelineBars(job, now);
  assert.deepEqual(t.bars.map((x) => [x.name, Math.round(x.left), Math.round(x.width)]), [["a", 0, 25], ["b", 25, 75], ["c", 0, 0]]);
  assert.equal(t.bars[1].label, "30 s");
  assert.deepEqual(JV.timelineBars({ steps: [] }, now).bars, []);
});

test("group markers", () => {
  assert.deepEqual(G.groupMarker("::group::Install deps"), { start: "Install deps" });
  assert.deepEqual(G.groupMarker("\x1b[36m::group::x\x1b[0m"), { start: "x" });
  assert.deepEqual(G.groupMarker("::endgroup::"), { end: true });
  assert.equal(G.groupMarker("echo ::group::x"), null);
  assert.equal(G.groupMarker("plain"), null);
});

test("keys: actions, only Esc in a text field, no modifiers", () => {
  const k = (key, extra) => Object.assign({ key }, extra || {});
  assert.equal(K.keyAction(k("/"), false), "search");
  assert.equal(K.keyAction(k("n"), false), "next");
  assert.equal(K.keyAction(k("N"), false), "prev");
  assert.equal(K.keyAction(k("g"), false), "top");
  assert.equal(K.keyAction(k("G"), false), "bottom");
  assert.equal(K.keyAction(k("f"), false), "follow");
  assert.equal(K.keyAction(k("?"), false), "help");
  assert.equal(K.keyAction(k("n"), true), null);
  assert.equal(K.keyAction(k("Escape"), true), "escape");
  assert.equal(K.keyAction(k("f", { ctrlKey: true }), false), null);
  assert.equal(K.nextTheme(null, true), "light");
  assert.equal(K.nextTheme(null, false), "dark");
  assert.equal(K.nextTheme("dark", false), "light");
  assert.equal(K.clampHeight(5, 800), 36);
  assert.equal(K.clampHeight(5000, 800), 640);
});

// --- WCAG AA: 4.5:1 for text ------------------------------------------------------------

const css = fs.readFileSync(path.join(__dirname, "../../static/css/log-stream.css"), "utf8");

function theme(name) {
  const m = new RegExp("/\\* theme:" + name + "[^*]*\\*/([\\s\\S]*?)/\\* end theme \\*/").exec(css);
  assert.ok(m, "theme block " + name);
  const vars = {};
  for (const v of m[1].matchAll(/--([a-z-]+):\s*([^;]+);/g)) vars[v[1]] = v[2].trim();
  return vars;
}

function rgba(s) {
  let m = /^#([0-9a-f]{6})$/i.exec(s);
  if (m) return [0, 2, 4].map((i) => parseInt(m[1].slice(i, i + 2), 16)).concat([1]);
  m = /^rgba\(([^)]+)\)$/.exec(s);
  if (m) return m[1].split(",").map(Number);
  throw new Error("colour " + s);
}

function over(fg, bg) {   // alpha blend
  const a = fg[3];
  return [0, 1, 2].map((i) => fg[i] * a + bg[i] * (1 - a)).concat([1]);
}

function lum(c) {
  const [r, g, b2] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b2;
}

function ratio(a, b2) {
  const [x, y] = [lum(a), lum(b2)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
}

const PAIRS = [  // [text, background row tint or null]
  ["log-ink", null], ["log-muted", null], ["log-ln", null], ["ink-debug", null], ["lv-debug", null],
  ["lv-info", null], ["lv-warn", "row-warn"], ["lv-error", "row-error"], ["ink-error", "row-error"],
  ["log-ink", "row-warn"], ["mark-ink", "mark-bg"], ["stephead-ink", "stephead-bg"], ["where-ink", null],
  ["badge-ink", "badge-bg"], ...["running", "completed", "failed", "cancelled", "skipped", "pending"]
    .map((s) => [`badge-${s}-ink`, `badge-${s}-bg`])];
const OPAQUE = /^(mark|stephead|badge)/;   // backgrounds of their own, not tints of the log's

for (const name of ["light", "dark"]) {
  test(`${name} theme: log text, level and status badge colours meet WCAG AA (4.5:1)`, () => {
    const v = theme(name);
    const bg = rgba(v["log-bg"]);
    const report = [];
    for (const [fg, tint] of PAIRS) {
      const back = tint ? (OPAQUE.test(tint) ? rgba(v[tint]) : over(rgba(v[tint]), bg)) : bg;
      const r = ratio(rgba(v[fg]), back);
      report.push(`${fg}${tint ? " on " + tint : ""} ${r.toFixed(2)}`);
      assert.ok(r >= 4.5, `${name}: ${fg} on ${tint || "log-bg"} is ${r.toFixed(2)}:1`);
    }
    console.log(`# contrast ${name}: ` + report.join(", "));
  });
}

test("the dark theme chosen by the toggle and by the system are the same colours", () => {
  assert.deepEqual(theme("dark"), theme("dark-auto"));
});
