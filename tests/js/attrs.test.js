"use strict";
// Attributes on the pages (issue 23): the filters on stream and poll URLs, the filters in a
// page's address, a line's fields, the trace link (never a javascript: URL).
const test = require("node:test");
const assert = require("node:assert/strict");
const Q = require("../../static/js/log-stream.js");
const A = require("../../static/js/log-attrs.js");
const P = require("../../static/js/search-page.js");

const params = (q) => Array.from(new URLSearchParams(q).entries());

test("buildQueryParams: attr.KEY=VALUE for each filter (as text, once), then trace_id", () => {
  assert.deepEqual(params(Q.buildQueryParams({ jobId: "j", level: "info", q: "x",
    attrs: [["user.id", "42"], ["http.status_code", 500], ["user.id", "42"], { key: "ok", value: true }],
    traceId: "4BF92F3577B34DA6A3CE929D0E0E4736" })), [
    ["scope", "job"], ["job_id", "j"], ["level", "info"], ["q", "x"],
    ["attr.user.id", "42"], ["attr.http.status_code", "500"], ["attr.ok", "true"],
    ["trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"]]);
  // odd keys and values are encoded, never break the query
  const odd = Q.buildQueryParams({ scope: "service", attrs: [["a&b=c", "x y&z=1#"]] });
  assert.deepEqual(params(odd), [["scope", "service"], ["attr.a&b=c", "x y&z=1#"]]);
  assert.equal(Q.buildQueryParams({ scope: "service", attrs: [], traceId: "" }), "scope=service");
  assert.throws(() => Q.buildQueryParams({ scope: "service", traceId: "xyz" }), RangeError);
  assert.throws(() => Q.buildQueryParams({ scope: "service", attrs: [["", "v"]] }), RangeError);
  assert.throws(() => Q.buildQueryParams({ scope: "service", attrs: [["k".repeat(129), "v"]] }), RangeError);
  const many = Array.from({ length: 21 }, (_, i) => ["k" + i, "v"]);
  assert.throws(() => Q.buildQueryParams({ scope: "service", attrs: many }), RangeError);
});

test("LogStream: the stream and its resumes and polls carry the attribute filters", () => {
  const s = Q.createServiceStream({ attrs: [["user.id", "42"]], traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
    EventSource: function () {} });
  const first = new URL(s.streamUrl(), "http://x").searchParams;
  assert.equal(first.get("attr.user.id"), "42");
  assert.equal(first.get("trace_id"), "4bf92f3577b34da6a3ce929d0e0e4736");
  s.lastId = 9;
  for (const url of [s.streamUrl(), s.pollUrl()]) {
    const p = new URL(url, "http://x").searchParams;
    assert.equal(p.get("attr.user.id"), "42");
    assert.equal(p.get("after"), "9");
  }
});

test("valueText and fieldsOf: attributes as the server compares them, then trace and span", () => {
  assert.equal(A.valueText(500), "500");
  assert.equal(A.valueText(1.5), "1.5");
  assert.equal(A.valueText(false), "false");
  assert.equal(A.valueText("<b>"), "<b>");
  const line = { attributes: { "user.id": "42", code: 500, ok: true },
    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736", span_id: "00f067aa0ba902b7" };
  assert.deepEqual(A.fieldsOf(line), [
    { kind: "attr", key: "user.id", value: "42" }, { kind: "attr", key: "code", value: "500" },
    { kind: "attr", key: "ok", value: "true" },
    { kind: "trace", key: "trace_id", value: "4bf92f3577b34da6a3ce929d0e0e4736" },
    { kind: "span", key: "span_id", value: "00f067aa0ba902b7" }]);
  assert.equal(A.hasFields(line), true);
  assert.equal(A.hasFields({ attributes: {} }), false);
  assert.equal(A.hasFields({ message: "m" }), false);
  assert.equal(A.hasFields({ span_id: "00f067aa0ba902b7" }), true);
  assert.deepEqual(A.fieldsOf({ message: "m" }), []);
});

test("traceLink: the id URL-encoded into an http(s) template; anything else is no link", () => {
  const id = "4bf92f3577b34da6a3ce929d0e0e4736";
  assert.equal(A.traceLink("https://jaeger.example/trace/{trace_id}", id), "https://jaeger.example/trace/" + id);
  assert.equal(A.traceLink("http://t.example/?id={trace_id}&x={trace_id}", id.toUpperCase()),
    "http://t.example/?id=" + id + "&x=" + id);
  assert.equal(A.traceLink("", id), null);
  assert.equal(A.traceLink(null, id), null);
  assert.equal(A.traceLink("javascript:alert(1)//{trace_id}", id), null);
  assert.equal(A.traceLink("JavaScript:alert('{trace_id}')", id), null);
  assert.equal(A.traceLink(" javascript:alert(1)/{trace_id}", id), null);
  assert.equal(A.traceLink("data:text/html,{trace_id}", id), null);
  assert.equal(A.traceLink("//evil.example/{trace_id}", id), null);
  assert.equal(A.traceLink("https://t.example/trace", id), null);        // no {trace_id}
  assert.equal(A.traceLink("https://t.example/{trace_id}", "\"><script>"), null);
  assert.equal(A.traceLink("https://t.example/{trace_id}", "4bf9"), null);
});

test("filtersFromQuery: the page's own filters (or the service panel's, svc.), bad ones left out", () => {
  const search = "?q=x&attr.user.id=42&attr.user.id=43&attr.code=500&trace_id=4BF92F3577B34DA6A3CE929D0E0E4736" +
    "&svc.attr.source.kind=db&svc.trace_id=nothex&attr.=empty";
  assert.deepEqual(A.filtersFromQuery(search, ""), {
    attrs: [["user.id", "42"], ["user.id", "43"], ["code", "500"]],
    traceId: "4bf92f3577b34da6a3ce929d0e0e4736" });
  assert.deepEqual(A.filtersFromQuery(search, "svc."), { attrs: [["source.kind", "db"]], traceId: "" });
  assert.deepEqual(A.filtersFromQuery("", ""), { attrs: [], traceId: "" });
  const many = Array.from({ length: 30 }, (_, i) => "attr.k" + i + "=v").join("&");
  assert.equal(A.filtersFromQuery(many, "").attrs.length, 20);
});

test("queryWithFilters: the address keeps its other parameters and the other view's filters", () => {
  const f = { attrs: [["user.id", "42"], ["a b", "c&d"]], traceId: "" };
  assert.equal(A.queryWithFilters("?level=warn&attr.old=1&svc.attr.x=y", f, ""),
    "level=warn&svc.attr.x=y&attr.user.id=42&attr.a+b=c%26d");
  assert.equal(A.queryWithFilters("?attr.old=1&svc.attr.x=y", A.noFilters(), "svc."), "attr.old=1");
  const t = { attrs: [], traceId: "4bf92f3577b34da6a3ce929d0e0e4736" };
  assert.equal(A.queryWithFilters("", t, "svc."), "svc.trace_id=4bf92f3577b34da6a3ce929d0e0e4736");
  // what is written is read back the same
  assert.deepEqual(A.filtersFromQuery(A.queryWithFilters("?q=1", f, ""), ""), f);
});

test("addAttr, setTrace, chipsOf, removeFilter", () => {
  let f = A.noFilters();
  f = A.addAttr(f, "user.id", "42");
  f = A.addAttr(f, "code", 500);
  f = A.addAttr(f, "user.id", "42");                     // once
  f = A.setTrace(f, "4bf92f3577b34da6a3ce929d0e0e4736");
  assert.deepEqual(f, { attrs: [["user.id", "42"], ["code", "500"]], traceId: "4bf92f3577b34da6a3ce929d0e0e4736" });
  const chips = A.chipsOf(f);
  assert.deepEqual(chips.map((c) => c.label),
    ["user.id=42", "code=500", "trace_id=4bf92f3577b34da6a3ce929d0e0e4736"]);
  assert.equal(new Set(chips.map((c) => c.id)).size, 3);
  assert.deepEqual(A.removeFilter(f, chips[0]).attrs, [["code", "500"]]);
  assert.equal(A.removeFilter(f, chips[2]).traceId, "");
  assert.deepEqual(A.removeFilter(f, chips[2]).attrs, f.attrs);
  assert.equal(A.setTrace(A.noFilters(), "javascript:").traceId, "");
  let full = A.noFilters();
  for (let i = 0; i < 25; i++) full = A.addAttr(full, "k" + i, "v");
  assert.equal(full.attrs.length, 20);                    // no more than the server takes
});

test("searchQuery: q optional with attribute filters; parseFilterText", () => {
  const filters = { attrs: [["user.id", "42"]], traceId: "4bf92f3577b34da6a3ce929d0e0e4736" };
  assert.deepEqual(params(P.searchQuery({ q: "", filters, level: "warn", limit: 50 })), [
    ["level", "warn"], ["attr.user.id", "42"], ["trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"], ["limit", "50"]]);
  assert.deepEqual(params(P.searchQuery({ q: "x", filters: { attrs: [["k", "v"]], traceId: "" } })),
    [["q", "x"], ["attr.k", "v"]]);
  assert.deepEqual(params(P.searchQuery({ q: "" })), [["q", ""]]);
  assert.deepEqual(P.parseFilterText("user.id=42"), { kind: "attr", key: "user.id", value: "42" });
  assert.deepEqual(P.parseFilterText(" url = a=b"), { kind: "attr", key: "url", value: " a=b" });
  assert.deepEqual(P.parseFilterText("trace_id=4BF92F3577B34DA6A3CE929D0E0E4736"),
    { kind: "trace", key: "trace_id", value: "4bf92f3577b34da6a3ce929d0e0e4736" });
  assert.equal(P.parseFilterText("novalue"), null);
  assert.equal(P.parseFilterText("=42"), null);
});
