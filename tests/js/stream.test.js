"use strict";
// LogStream and QueueSSEManager against a fake EventSource, a fake fetch and mocked timers.
const test = require("node:test");
const assert = require("node:assert/strict");
const Q = require("../../static/js/log-stream.js");
const { QueueSSEManager } = require("../../static/js/log-components.js");
const { FakeEventSource: ES, fakeFetch, settle, line } = require("./helpers.js");

function setup(t, handler, extra) {
  ES.reset();
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const got = { lines: [], states: [], status: [], end: null };
  const fetch = fakeFetch(handler || (() => { throw new TypeError("offline"); }));
  const stream = Q.createServiceStream(Object.assign({
    EventSource: ES, fetch, random: () => 0, limit: 50,
    onLines: (lines) => got.lines.push(...lines.map((l) => l.id)),
    onState: (s) => got.states.push(s),
    onStatus: (p) => got.status.push(p.job.status),
    onEnd: (p) => { got.end = p; }
  }, extra || {}));
  return { stream, got, fetch };
}

const logs = (ids, meta) => ({ logs: ids.map((id) => line(id)), meta: meta || { total_count: 0, displayed_count: 0, has_more: false } });

test("connects with the backfill limit, then reconnects after the last id with backoff", (t) => {
  const { stream, got } = setup(t);
  stream.start();
  const first = ES.last();
  assert.equal(first.params.get("limit"), "50");
  assert.equal(first.params.get("after"), null);
  first.open();
  first.emit("logs", logs([1, 2, 3]), "3");
  assert.equal(stream.state, "connected");
  first.fail(false);                           // the connection dropped
  assert.ok(first.closed, "we reconnect ourselves, not the browser");
  assert.equal(stream.state, "reconnecting");
  t.mock.timers.tick(999);
  assert.equal(ES.instances.length, 1);
  t.mock.timers.tick(1);                      // backoff 1000 ms (random 0: the top of the range)
  const second = ES.last();
  assert.equal(ES.instances.length, 2);
  assert.equal(second.params.get("after"), "3");
  assert.equal(second.params.get("limit"), null);
  second.emit("logs", logs([3, 4]), "4");       // an overlap is not shown twice
  assert.deepEqual(got.lines, [1, 2, 3, 4]);
  assert.equal(stream.state, "connected");
  stream.close();
});

test("an empty backfill resumes from 0: every later line is new", (t) => {
  const { stream } = setup(t);
  stream.start();
  ES.last().emit("logs", logs([]));
  ES.last().fail(false);
  t.mock.timers.tick(1000);
  assert.equal(ES.last().params.get("after"), "0");
  stream.close();
});

test("backoff grows while the server stays away, and resets once connected", (t) => {
  const { stream } = setup(t);
  stream.start();
  const waits = [];
  for (let i = 0; i < 5; i++) {
    const n = ES.instances.length;
    ES.last().fail(false);
    let waited = 0;
    while (ES.instances.length === n) { t.mock.timers.tick(250); waited += 250; }
    waits.push(waited);
  }
  assert.deepEqual(waits, [1000, 2000, 4000, 8000, 15000]);   // capped at backoffMax
  ES.last().emit("ping", { timestamp: "x" });
  ES.last().fail(false);
  t.mock.timers.tick(1000);
  assert.equal(ES.instances.length, 7, "back to the first delay");
  stream.close();
});

test("falls back to polling after= when the stream cannot connect, and back to the stream", async (t) => {
  let serverUp = false;
  const { stream, got, fetch } = setup(t, (url) => {
    if (!serverUp) throw new TypeError("Failed to fetch");
    const after = Number(new URL(url, "http://x").searchParams.get("after"));
    return { status: 200, body: { logs: [line(after + 1), line(after + 2)], meta: { has_more: false }, last_id: after + 2 } };
  });
  stream.start();
  ES.last().emit("logs", logs([7]), "7");
  ES.last().fail(false);
  t.mock.timers.tick(1000);
  ES.last().fail(false);                          // second failure in a row: poll
  await settle();
  assert.equal(fetch.calls.length, 1);
  assert.match(fetch.calls[0], /\/api\/logs\?scope=service&level=info&limit=1000&after=7$/);
  assert.equal(stream.state, "disconnected", "neither stream nor polling reach the server");
  serverUp = true;
  t.mock.timers.tick(3000);                       // the next poll
  await settle();
  assert.deepEqual(got.lines, [7, 8, 9]);
  // The stream is tried again (here the backoff timer fired before the poll); it resumes
  // after the last id it saw, and what the poll already showed is not shown again.
  const es = ES.last();
  assert.ok(["7", "9"].includes(es.params.get("after")));
  es.open();
  es.emit("logs", logs([8, 9, 10]), "10");
  assert.equal(stream.state, "connected");
  assert.deepEqual(got.lines, [7, 8, 9, 10]);
  const polls = fetch.calls.length;
  t.mock.timers.tick(10000);
  await settle();
  assert.equal(fetch.calls.length, polls, "polling stopped");
  assert.ok(got.states.includes("disconnected") && got.states.includes("polling"));
  stream.close();
});

test("a refused stream (HTTP error: readyState CLOSED) polls at once", async (t) => {
  const { stream, fetch } = setup(t, () => ({ status: 200, body: { logs: [], meta: {}, last_id: null } }));
  stream.start();
  ES.last().fail(true);
  await settle();
  assert.equal(fetch.calls.length, 1);
  assert.equal(stream.state, "polling");
  stream.close();
});

test("a stalled stream (no event, not even a ping) is replaced by polling", async (t) => {
  const { stream, fetch } = setup(t, () => ({ status: 200, body: { logs: [], meta: {}, last_id: 5 } }));
  stream.start();
  const es = ES.last();
  es.emit("logs", logs([5]), "5");
  t.mock.timers.tick(14000);
  es.emit("ping", {});
  t.mock.timers.tick(14000);
  assert.equal(fetch.calls.length, 0, "pings keep it alive");
  t.mock.timers.tick(1000);
  await settle();
  assert.ok(es.closed);
  assert.equal(fetch.calls.length, 1);
  assert.equal(stream.state, "polling");
  stream.close();
});

test("end closes the stream for good", (t) => {
  ES.reset();
  t.mock.timers.enable({ apis: ["setTimeout"] });
  let ended = null;
  const s = Q.createJobStream("j1", { EventSource: ES, fetch: fakeFetch(() => ({ status: 500, body: {} })),
    onEnd: (p) => { ended = p; } });
  s.start();
  const es = ES.last();
  assert.equal(es.params.get("scope"), "job");
  assert.equal(es.params.get("job_id"), "j1");
  es.emit("status", { job: { id: "j1", status: "running" }, steps: [] });
  es.emit("end", { job: { id: "j1", status: "completed" } });
  assert.ok(es.closed);
  assert.equal(s.state, "ended");
  assert.deepEqual(ended, { job: { id: "j1", status: "completed" } });
  es.fail(false);
  t.mock.timers.tick(60000);
  assert.equal(ES.instances.length, 1, "no reconnect after end");
});

test("the buffer holds at most 1000 lines", (t) => {
  const { stream } = setup(t);
  stream.start();
  const ids = Array.from({ length: 1500 }, (_, i) => i + 1);
  ES.last().emit("logs", logs(ids.slice(0, 800)));
  ES.last().emit("logs", logs(ids.slice(800)));
  assert.equal(stream.buffer.length, 1000);
  assert.equal(stream.buffer.lines[0].id, 501);
  stream.close();
});

test("QueueSSEManager: eight jobs over one EventSource, lines routed per job, once each", async (t) => {
  ES.reset();
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const m = new QueueSSEManager({ limit: 3, streamOptions: { EventSource: ES, fetch: fakeFetch(() => ({ status: 500, body: {} })) } });
  const got = {};
  const ids = Array.from({ length: 8 }, (_, i) => "job" + i);
  ids.forEach((id) => {
    got[id] = [];
    m.connectJob(id, { onLines: (lines) => got[id].push(...lines.map((l) => l.id)) });
  });
  t.mock.timers.tick(100);
  assert.equal(ES.instances.length, 1, "one connection for all jobs");
  const es = ES.last();
  assert.deepEqual(es.params.getAll("job_id"), ids);
  es.emit("logs", { logs: [line(1, { job_id: "job0" }), line(2, { job_id: "job7" })], meta: {} }, "2");
  es.emit("logs", { logs: [line(3, { job_id: "job0" })], meta: {} }, "3");
  assert.deepEqual(got.job0, [1, 3]);
  assert.deepEqual(got.job7, [2]);
  // collapsing one job reopens the one stream without it; the others keep their lines once
  m.disconnectJob("job3");
  t.mock.timers.tick(100);
  assert.ok(es.closed);
  assert.equal(ES.instances.length, 2);
  const es2 = ES.last();
  assert.deepEqual(es2.params.getAll("job_id"), ids.filter((id) => id !== "job3"));
  es2.emit("logs", { logs: [line(1, { job_id: "job0" }), line(2, { job_id: "job7" }), line(3, { job_id: "job0" }),
    line(4, { job_id: "job0" })], meta: {} }, "4");
  assert.deepEqual(got.job0, [1, 3, 4]);
  assert.deepEqual(got.job7, [2]);
  assert.equal(m.streamCount, 1);
  m.disconnectAll();
  assert.ok(es2.closed);
  assert.equal(m.streamCount, 0);
  await settle();
});

test("QueueSSEManager: more than 50 jobs use a second stream", (t) => {
  ES.reset();
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const m = new QueueSSEManager({ streamOptions: { EventSource: ES, fetch: fakeFetch(() => ({ status: 500, body: {} })) } });
  for (let i = 0; i < 60; i++) m.connectJob("j" + i, {});
  t.mock.timers.tick(100);
  assert.equal(ES.instances.length, 2);
  assert.equal(ES.instances[0].params.getAll("job_id").length, 50);
  assert.equal(ES.instances[1].params.getAll("job_id").length, 10);
  m.disconnectAll();
});
