"use strict";
// Fakes for the browser APIs the stream client uses: EventSource and fetch.

class FakeEventSource {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.listeners = {};
    this.closed = false;
    FakeEventSource.instances.push(this);
  }
  addEventListener(name, fn) {
    (this.listeners[name] = this.listeners[name] || []).push(fn);
  }
  open() {
    this.readyState = 1;
    if (this.onopen) this.onopen({});
  }
  emit(name, data, id) {
    (this.listeners[name] || []).forEach((fn) => fn({ data: JSON.stringify(data), lastEventId: id || "" }));
  }
  fail(closed) {
    this.readyState = closed ? 2 : 0;
    if (this.onerror) this.onerror({});
  }
  close() {
    this.readyState = 2;
    this.closed = true;
  }
  get params() {
    return new URL(this.url, "http://x").searchParams;
  }
}
FakeEventSource.instances = [];
FakeEventSource.reset = () => { FakeEventSource.instances = []; };
FakeEventSource.last = () => FakeEventSource.instances[FakeEventSource.instances.length - 1];

/** fetch that answers from `handler(url)` -> {status, body} or throws (network error). */
function fakeFetch(handler) {
  const calls = [];
  const fn = (url) => {
    calls.push(url);
    return new Promise((resolve, reject) => {
      let res;
      try {
        res = handler(url);
      } catch (err) {
        reject(err);
        return;
      }
      resolve({ status: res.status, ok: res.status >= 200 && res.status < 300,
        json: () => Promise.resolve(res.body) });
    });
  };
  fn.calls = calls;
  return fn;
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

async function settle(times = 5) {
  for (let i = 0; i < times; i++) await flush();
}

function line(id, extra) {
  return Object.assign({ id, timestamp: "2026-11-26T10:30:45.123Z", level: "info",
    message: "line " + id, job_id: null, step_name: null, line_number: id }, extra || {});
}

module.exports = { FakeEventSource, fakeFetch, flush, settle, line };
