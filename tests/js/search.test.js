"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const Q = require("../../static/js/log-stream.js");
const S = require("../../static/js/job-search.js");
const P = require("../../static/js/search-page.js");

const params = (q) => Array.from(new URLSearchParams(q).entries());

test("buildQueryParams: q is sent literally (spaces, symbols, case), empty left out, too long throws", () => {
  assert.deepEqual(params(Q.buildQueryParams({ jobId: "j", q: " Disk FULL & 100% " })),
    [["scope", "job"], ["job_id", "j"], ["q", " Disk FULL & 100% "]]);
  assert.equal(Q.buildQueryParams({ scope: "service", q: "" }), "scope=service");
  assert.equal(Q.buildQueryParams({ scope: "service", q: null }), "scope=service");
  assert.equal(params(Q.buildQueryParams({ q: "x".repeat(200) }))[1][1].length, 200);
  assert.throws(() => Q.buildQueryParams({ q: "x".repeat(201) }), RangeError);
});

test("LogStream: the stream and the polls carry q", () => {
  const s = Q.createJobStream("j1", { q: "needle", EventSource: function () {} });
  assert.match(s.streamUrl(), /[?&]q=needle(&|$)/);
  s.lastId = 7;
  assert.match(s.pollUrl(), /q=needle/);
  assert.match(s.pollUrl(), /after=7/);
});

test("matchLabel: what the job page's search box says", () => {
  assert.equal(S.matchLabel({ query: "", total: 3 }), "");
  assert.equal(S.matchLabel({ query: "   ", total: 3 }), "");
  assert.equal(S.matchLabel({ query: "x", total: null }), "Searching…");
  assert.equal(S.matchLabel({ query: "x", total: 0 }), "No lines match");
  assert.equal(S.matchLabel({ query: "x", total: 1, index: -1 }), "1 matching line");
  assert.equal(S.matchLabel({ query: "x", total: 3, index: -1 }), "3 matching lines");
  assert.equal(S.matchLabel({ query: "x", total: 3, index: 1 }), "2 of 3 matching lines");
  assert.equal(S.matchLabel({ query: "x", total: 10000, capped: true, index: 0 }), "1 of 10000+ matching lines");
  assert.equal(S.matchLabel({ query: "x", total: 3, error: "q must be 1 to 200 characters" }),
    "q must be 1 to 200 characters");
});

test("searchText: spaces only is no search; otherwise the text as typed", () => {
  assert.equal(S.searchText("  "), "");
  assert.equal(S.searchText(null), "");
  assert.equal(S.searchText(" a b "), " a b ");
});

test("searchQuery: the /api/search query (and the page's address)", () => {
  assert.deepEqual(params(P.searchQuery({ q: "Disk full", level: "debug" })), [["q", "Disk full"]]);
  assert.deepEqual(params(P.searchQuery({ q: "x", level: "warn", jobId: "ab12", before: 900, limit: 50 })),
    [["q", "x"], ["level", "warn"], ["job_id", "ab12"], ["before", "900"], ["limit", "50"]]);
  assert.deepEqual(params(P.searchQuery({ q: "x", before: 0 })), [["q", "x"], ["before", "0"]]);
});

test("splitMatches: pieces for x-text, the matches marked, any case, nothing lost", () => {
  assert.deepEqual(P.splitMatches("Disk full, DISK FULL!", "disk full"), [
    { text: "Disk full", match: true }, { text: ", ", match: false },
    { text: "DISK FULL", match: true }, { text: "!", match: false }]);
  assert.deepEqual(P.splitMatches("<b>x</b>", "nothing"), [{ text: "<b>x</b>", match: false }]);
  assert.deepEqual(P.splitMatches("", "a"), [{ text: "", match: false }]);
  const parts = P.splitMatches("aaa", "a");
  assert.equal(parts.map((p) => p.text).join(""), "aaa");
  assert.ok(parts.every((p) => p.match));
});

test("lineLink: a job's line, or the service log", () => {
  assert.equal(P.lineLink({ job_id: "a/b", line_number: 12 }), "/jobs/a%2Fb#L12");
  assert.equal(P.lineLink({ job_id: null, line_number: 3 }), "/#svc-lines");
});

test("findRecord: a loaded line by id", () => {
  const view = { records: [{ line: { id: 4 } }, { line: { id: 9 } }] };
  assert.equal(S.findRecord(view, 9), view.records[1]);
  assert.equal(S.findRecord(view, 5), null);
});
