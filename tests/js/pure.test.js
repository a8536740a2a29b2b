"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const Q = require("../../static/js/log-stream.js");

const params = (q) => Array.from(new URLSearchParams(q).entries());

test("buildQueryParams: service scope and defaults", () => {
  assert.equal(Q.buildQueryParams({}), "scope=service");
  assert.equal(Q.buildQueryParams({ scope: "service", level: "warn", limit: 200 }),
    "scope=service&level=warn&limit=200");
});

test("buildQueryParams: one or several jobs, job_id repeated", () => {
  assert.deepEqual(params(Q.buildQueryParams({ jobId: "a1" })), [["scope", "job"], ["job_id", "a1"]]);
  assert.deepEqual(params(Q.buildQueryParams({ scope: "job", jobIds: ["a", "b", "a", "", null], step: "build" })),
    [["scope", "job"], ["job_id", "a"], ["job_id", "b"], ["step", "build"]]);
});

test("buildQueryParams: after, before, limit are non-negative integers; empty values left out", () => {
  assert.equal(Q.buildQueryParams({ scope: "job", jobId: "j", after: 0, before: "", limit: null }),
    "scope=job&job_id=j&after=0");
  assert.equal(Q.buildQueryParams({ scope: "job", jobId: "j", before: "42" }), "scope=job&job_id=j&before=42");
  for (const bad of [-1, 1.5, "abc", NaN, Infinity]) {
    assert.throws(() => Q.buildQueryParams({ after: bad }), RangeError, String(bad));
  }
});

test("buildQueryParams: levels are normalised and checked", () => {
  assert.equal(Q.buildQueryParams({ level: "WARNING" }), "scope=service&level=warn");
  assert.equal(Q.buildQueryParams({ level: " Error " }), "scope=service&level=error");
  assert.throws(() => Q.buildQueryParams({ level: "verbose" }), RangeError);
});

test("buildQueryParams: what the server would refuse is refused here", () => {
  assert.throws(() => Q.buildQueryParams({ scope: "job" }), /job id/);
  assert.throws(() => Q.buildQueryParams({ scope: "service", jobId: "x" }), RangeError);
  assert.throws(() => Q.buildQueryParams({ scope: "service", step: "x" }), RangeError);
  assert.throws(() => Q.buildQueryParams({ scope: "everything" }), RangeError);
  const ids = Array.from({ length: 51 }, (_, i) => "j" + i);
  assert.throws(() => Q.buildQueryParams({ jobIds: ids }), /at most 50/);
  assert.equal(new URLSearchParams(Q.buildQueryParams({ jobIds: ids.slice(0, 50) })).getAll("job_id").length, 50);
});

test("buildQueryParams: values are URL-encoded", () => {
  const q = Q.buildQueryParams({ jobId: "a&b=c", step: "deploy prod/eu" });
  assert.deepEqual(params(q), [["scope", "job"], ["job_id", "a&b=c"], ["step", "deploy prod/eu"]]);
});

test("backoffDelay: exponential, capped, with jitter in the upper half", () => {
  const top = (n) => Q.backoffDelay(n, { base: 1000, max: 30000, random: () => 0 });
  const bottom = (n) => Q.backoffDelay(n, { base: 1000, max: 30000, random: () => 1 });
  assert.deepEqual([0, 1, 2, 3, 4].map(top), [1000, 2000, 4000, 8000, 16000]);
  assert.deepEqual([0, 1, 2, 3, 4].map(bottom), [500, 1000, 2000, 4000, 8000]);
  assert.equal(top(5), 30000);
  assert.equal(top(100), 30000);
  assert.equal(top(1e6), 30000);
  assert.equal(bottom(100), 15000);
  assert.equal(top(-3), 1000);
});

test("backoffDelay: random values stay within bounds and are spread", () => {
  const seen = new Set();
  for (let i = 0; i < 500; i++) {
    const d = Q.backoffDelay(3);
    assert.ok(d >= 4000 && d <= 8000, String(d));
    seen.add(d);
  }
  assert.ok(seen.size > 50, "jitter spreads reconnects");
  assert.equal(Q.backoffDelay(2, { base: 100, jitter: 0, random: () => 0.7 }), 400);
});

test("LineBuffer keeps at most max lines, the newest", () => {
  const b = new Q.LineBuffer(1000);
  const lines = Array.from({ length: 2500 }, (_, i) => ({ id: i + 1 }));
  b.push(lines.slice(0, 700));
  b.push(lines.slice(700, 1200));
  assert.equal(b.length, 1000);
  assert.equal(b.lines[0].id, 201);
  assert.equal(b.lines[999].id, 1200);
  b.push(lines.slice(1200));
  assert.equal(b.length, 1000);
  assert.equal(b.lines[0].id, 1501);
  assert.equal(b.lastId, 2500);
  assert.equal(b.dropped, 1500);
  assert.equal(new Q.LineBuffer().max, 1000);
});

test("LineBuffer drops lines it has seen (resume and poll overlap)", () => {
  const b = new Q.LineBuffer(10);
  assert.deepEqual(b.push([{ id: 1 }, { id: 2 }, { id: 3 }]).map((l) => l.id), [1, 2, 3]);
  assert.deepEqual(b.push([{ id: 2 }, { id: 3 }, { id: 4 }]).map((l) => l.id), [4]);
  assert.deepEqual(b.push([{ id: 4 }]), []);
  assert.deepEqual(b.lines.map((l) => l.id), [1, 2, 3, 4]);
});

test("LineBuffer.clear forgets lines, not the position; prepend fills room with older lines", () => {
  const b = new Q.LineBuffer(5);
  b.push([{ id: 10 }, { id: 11 }]);
  b.clear();
  assert.equal(b.length, 0);
  assert.deepEqual(b.push([{ id: 11 }, { id: 12 }]).map((l) => l.id), [12]);
  assert.deepEqual(b.prepend([{ id: 5 }, { id: 6 }, { id: 7 }, { id: 8 }, { id: 12 }]).map((l) => l.id), [5, 6, 7, 8]);
  assert.deepEqual(b.lines.map((l) => l.id), [5, 6, 7, 8, 12]);
  assert.deepEqual(b.prepend([{ id: 1 }]), [], "no room");
});

test("parseAnsi: colours, attributes, reset", () => {
  const segs = Q.parseAnsi("plain \x1b[1;31mbold red\x1b[0m back \x1b[42mon green\x1b[49m done");
  assert.deepEqual(segs.map((s) => s.text), ["plain ", "bold red", " back ", "on green", " done"]);
  assert.deepEqual(segs[1].style, { bold: true, fg: 1 });
  assert.deepEqual(segs[2].style, {});
  assert.deepEqual(segs[3].style, { bg: 2 });
  assert.deepEqual(segs[4].style, {});
  assert.deepEqual(Q.parseAnsi("\x1b[93mx")[0].style, { fg: 11 });
});

test("parseAnsi: 256 colours and true colour", () => {
  assert.deepEqual(Q.parseAnsi("\x1b[38;5;196mred")[0].style, { fg: "#ff0000" });
  assert.deepEqual(Q.parseAnsi("\x1b[38;5;4mblue")[0].style, { fg: 4 });
  assert.deepEqual(Q.parseAnsi("\x1b[48;5;244mgrey")[0].style, { bg: "#808080" });
  assert.deepEqual(Q.parseAnsi("\x1b[38;2;10;20;300mx")[0].style, { fg: "#0a14ff" });
});

test("parseAnsi: other escapes are dropped, text is never interpreted", () => {
  assert.equal(Q.stripAnsi("\x1b[2K\x1b[1Gprogress\x1b]0;title\x07 50%\x1b[?25l"), "progress 50%");
  const html = '<script>alert(1)</script><img src=x onerror="alert(2)">';
  assert.deepEqual(Q.parseAnsi(html), [{ text: html, style: {} }]);
  assert.deepEqual(Q.parseAnsi(""), []);
  assert.equal(Q.stripAnsi("a\x1b[31m<b>\x1b[0m"), "a<b>");
});

test("findMatches: case-insensitive, non-overlapping", () => {
  assert.deepEqual(Q.findMatches("Error: error ERROR", "error"), [[0, 5], [7, 12], [13, 18]]);
  assert.deepEqual(Q.findMatches("aaaa", "aa"), [[0, 2], [2, 4]]);
  assert.deepEqual(Q.findMatches("abc", ""), []);
});

test("formatDuration", () => {
  assert.equal(Q.formatDuration(850), "850 ms");
  assert.equal(Q.formatDuration(12300), "12 s");
  assert.equal(Q.formatDuration(4200), "4.2 s");
  assert.equal(Q.formatDuration(245000), "4m 05s");
  assert.equal(Q.formatDuration(7380000), "2h 03m");
  assert.equal(Q.formatDuration(null), "");
});

test("dropLevelWord: the level a line starts with is not repeated after its badge", () => {
  const cases = [
    ["ERROR: it broke", "error", "it broke"],
    ["[debug] hidden", "debug", "hidden"],
    ["WARNING: careful", "warn", "careful"],
    ["  <warn> angle", "warn", "angle"],
    ["INFO 4 steps", "info", "4 steps"],
    ["\x1b[31mERROR: red\x1b[0m", "error", "\x1b[31mred\x1b[0m"],
    ["\x1b[1;31mERROR\x1b[0m: x", "error", "\x1b[1;31m\x1b[0mx"],
    // another level's word, a word that only starts like one, nothing after it: kept
    ["ERROR: said by an info line", "info", "ERROR: said by an info line"],
    ["Errors happen", "error", "Errors happen"],
    ["ERROR", "error", "ERROR"],
    ["ERROR:   ", "error", "ERROR:   "],
    ["", "info", ""]
  ];
  for (const [message, level, shown] of cases) {
    assert.equal(Q.dropLevelWord(message, level), shown, JSON.stringify(message));
  }
});

test("times: formatTime, timeAgo, durationOf", () => {
  const at = new Date(2026, 10, 26, 9, 5, 7, 42).toISOString();
  assert.equal(Q.formatTime(at), "09:05:07.042");
  assert.equal(Q.formatDateTime(at), "2026-11-26 09:05:07");
  assert.equal(Q.formatTime("not a date"), "not a date");
  const now = Date.parse(at);
  assert.equal(Q.timeAgo(at, now + 59 * 1000), "59 s ago");
  assert.equal(Q.timeAgo(at, now + 3 * 3600 * 1000), "3 h ago");
  assert.equal(Q.durationOf({ started_at: at, finished_at: new Date(now + 4300).toISOString() }), "4.3 s");
  assert.equal(Q.durationOf({ started_at: null }), "");
});
