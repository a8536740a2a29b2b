/*
 * Quaero log streaming (no build step, no dependencies).
 *
 * window.QuaeroLogs = {
 *   createJobStream(jobId, options), createServiceStream(options), buildQueryParams(filters),
 *   LogStream, LineBuffer, backoffDelay, parseAnsi, findMatches, formatDuration, ...
 * }
 *
 * A LogStream follows one filter (the service log, or one or more jobs) over an
 * EventSource. When the stream errors it reconnects itself with exponential backoff and
 * jitter, resuming after the last line id it has seen (`after=`, the same as
 * Last-Event-ID), so that nothing is lost or repeated. When the stream stalls (no event,
 * not even a ping, for `stallTimeout`) or cannot connect, it polls `GET /api/logs?after=`
 * until the stream is back. It closes on `end`.
 *
 * Needs log-format.js and log-query.js first (their pure helpers are part of QuaeroLogs
 * too); in node it requires them.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroFormat || require("./log-format.js"), root.QuaeroQuery || require("./log-query.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroLogs = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, F, B) {
  "use strict";

  var normalizeLevel = B.normalizeLevel;
  var nonNegativeInt = B.nonNegativeInt;
  var jobIdsOf = B.jobIdsOf;
  var buildQueryParams = B.buildQueryParams;
  var LineBuffer = B.LineBuffer;
  var backoffDelay = B.backoffDelay;
  var isFinished = F.isFinished;

  // --- LogStream -----------------------------------------------------------------------

  var DEFAULTS = {
    baseUrl: "",
    streamPath: "/api/logs/stream",
    pollPath: "/api/logs",
    jobPath: "/api/jobs/",
    limit: 200,            // the backfill of a fresh stream
    maxLines: 1000,        // the buffer
    backoffBase: 1000,
    backoffMax: 15000,
    stallTimeout: 15000,   // the server pings every 5 s
    pollInterval: 3000,
    pollPageSize: 1000,
    failuresBeforePolling: 2,
    pollStatus: true       // job scope: poll the jobs' status while polling their lines
  };

  var noop = function () {};

  /**
   * Options: the filter (`scope`, `jobId`/`jobIds`, `step`, `level`, `q`, `attrs`, `traceId`,
   * `limit`), `after` (a line id to resume after instead of the backfill), the tunables in
   * DEFAULTS and the callbacks `onLines(lines, meta, info)`, `onStatus(payload)`, `onEnd(payload)`,
   * `onState(state, previous)`, `onAuthError()`, `onError(message)`.
   *
   * States: idle, connecting, connected, reconnecting, polling, disconnected, ended, closed.
   */
  function LogStream(options) {
    var o = Object.assign({}, DEFAULTS, options || {});
    this.options = o;
    this.filters = {
      scope: o.scope, jobIds: jobIdsOf(o), step: o.step || null,
      level: normalizeLevel(o.level) || "info", limit: Math.max(1, o.limit | 0),
      q: B.searchText(o.q), attrs: B.attrPairs(o.attrs), traceId: B.traceIdOf(o.traceId)
    };
    if (!this.filters.scope) this.filters.scope = this.filters.jobIds.length ? "job" : "service";
    buildQueryParams(this.filters);      // throws early on a bad filter
    this.buffer = new LineBuffer(o.maxLines);
    this.lastId = null;
    if (o.after !== undefined && o.after !== null) {
      this.lastId = nonNegativeInt(o.after, "after");
      this.buffer.lastId = this.lastId;
    }
    this.meta = null;
    this.state = "idle";
    this.endPayload = null;
    this.jobStatus = {};
    this._statusSig = {};
    this._es = null;
    this._attempt = 0;
    this._failures = 0;
    this._timers = {};
    this._polling = false;
    this._pollBusy = false;
    this._pollOk = null;
    this._closed = false;
    this._backfilled = false;
    this._ES = o.EventSource || (root && root.EventSource);
    this._fetch = o.fetch || (root && root.fetch ? root.fetch.bind(root) : null);
    var self = this;
    this._onOnline = function () { self.reconnectNow(); };
  }

  LogStream.prototype._emit = function (name) {
    var fn = this.options[name] || noop;
    try {
      return fn.apply(null, Array.prototype.slice.call(arguments, 1));
    } catch (err) {
      if (root && root.console) root.console.error(err);
    }
  };

  LogStream.prototype._setState = function (state) {
    if (this.state === state) return;
    var previous = this.state;
    this.state = state;
    this._emit("onState", state, previous);
  };

  LogStream.prototype._timer = function (name, ms, fn) {
    this._clearTimer(name);
    var self = this;
    this._timers[name] = setTimeout(function () {
      delete self._timers[name];
      fn.call(self);
    }, ms);
  };

  LogStream.prototype._clearTimer = function (name) {
    if (this._timers[name] !== undefined) {
      clearTimeout(this._timers[name]);
      delete this._timers[name];
    }
  };

  LogStream.prototype.query = function (extra) {
    var f = Object.assign({}, this.filters, extra || {});
    return buildQueryParams(f);
  };

  /** The stream URL: the backfill (`limit`) the first time, else resume `after=`. */
  LogStream.prototype.streamUrl = function () {
    var o = this.options;
    var q = this.lastId === null ? this.query() : this.query({ limit: null, after: this.lastId });
    return o.baseUrl + o.streamPath + "?" + q;
  };

  LogStream.prototype.pollUrl = function () {
    var o = this.options;
    var q = this.lastId === null ? this.query() : this.query({ limit: o.pollPageSize, after: this.lastId });
    return o.baseUrl + o.pollPath + "?" + q;
  };

  LogStream.prototype.start = function () {
    if (this._closed || this._es || this.state !== "idle") return this;
    if (root && root.addEventListener) root.addEventListener("online", this._onOnline);
    this._connect();
    return this;
  };

  LogStream.prototype.close = function () {
    this._shutdown();
    if (this.state !== "ended") this._setState("closed");
  };

  LogStream.prototype._shutdown = function () {
    this._closed = true;
    this._closeSource();
    this._polling = false;
    for (var name in this._timers) this._clearTimer(name);
    if (root && root.removeEventListener) root.removeEventListener("online", this._onOnline);
  };

  /** Try the stream now (the network is back, or the user asked). */
  LogStream.prototype.reconnectNow = function () {
    if (this._closed || this._es) return;
    this._attempt = 0;
    this._clearTimer("reconnect");
    this._connect();
  };

  LogStream.prototype._closeSource = function () {
    this._clearTimer("stall");
    if (this._es) {
      var es = this._es;
      this._es = null;
      es.onopen = es.onerror = null;
      try { es.close(); } catch (e) { /* already closed */ }
    }
  };

  LogStream.prototype._connect = function () {
    if (this._closed) return;
    if (!this._ES) {           // no EventSource at all: poll
      this._startPolling();
      return;
    }
    if (this.state === "idle") this._setState("connecting");
    var self = this;
    var es;
    try {
      es = new this._ES(this.streamUrl(), { withCredentials: false });
    } catch (err) {
      this._onStreamError(true);
      return;
    }
    this._es = es;
    this._opened = false;
    es.onopen = function () {
      if (self._es !== es) return;
      self._opened = true;
      self._alive();
    };
    es.onerror = function () {
      if (self._es !== es) return;
      // CLOSED: the server answered with an error (4xx/5xx JSON); CONNECTING: the
      // connection failed or dropped. Either way we reconnect ourselves, after= last id.
      self._onStreamError(es.readyState === 2);
    };
    var on = function (name, fn) {
      es.addEventListener(name, function (event) {
        if (self._es !== es) return;
        self._alive();
        var data = null;
        try {
          data = event.data ? JSON.parse(event.data) : null;
        } catch (err) {
          return;
        }
        fn(data, event);
      });
    };
    on("logs", function (data) { self._connected(); self._receive(data, "stream"); });
    on("status", function (data) { self._connected(); self._status(data); });
    on("ping", function () { self._connected(); });
    on("end", function (data) { self._end(data || {}); });
    this._timer("stall", this.options.stallTimeout, this._onStall);
  };

  /** Any event: the stream is alive; restart the stall timer. */
  LogStream.prototype._alive = function () {
    this._timer("stall", this.options.stallTimeout, this._onStall);
  };

  LogStream.prototype._connected = function () {
    this._attempt = 0;
    this._failures = 0;
    if (this._polling) {
      this._polling = false;
      this._clearTimer("poll");
    }
    this._setState("connected");
  };

  LogStream.prototype._onStall = function () {
    if (this._closed) return;
    this._onStreamError(false, true);
  };

  LogStream.prototype._onStreamError = function (fatal, stalled) {
    if (this._closed) return;
    this._closeSource();
    this._failures += 1;
    var delay = backoffDelay(this._attempt, {
      base: this.options.backoffBase, max: this.options.backoffMax, random: this.options.random
    });
    this._attempt += 1;
    this._timer("reconnect", delay, this._connect);
    if (fatal || stalled || this._failures >= this.options.failuresBeforePolling) {
      this._startPolling();
    } else if (!this._polling) {
      this._setState("reconnecting");
    }
  };

  LogStream.prototype._receive = function (data, source) {
    if (!data) return;
    var first = !this._backfilled;
    this._backfilled = true;
    var lines = Array.isArray(data.logs) ? data.logs : [];
    var accepted = this.buffer.push(lines);
    if (accepted.length) this.lastId = this.buffer.lastId;
    if (data.meta) this.meta = data.meta;
    if (source === "poll" && typeof data.last_id === "number" &&
        (this.lastId === null || data.last_id > this.lastId)) {
      this.lastId = data.last_id;
      this.buffer.lastId = Math.max(this.buffer.lastId || 0, data.last_id);
    }
    if (first && this.lastId === null && !lines.length && !(data.meta && data.meta.has_more)) {
      // Nothing matched yet: every matching line from now on has an id above 0.
      this.lastId = 0;
      this.buffer.lastId = 0;
    }
    if (accepted.length || first) {
      this._emit("onLines", accepted, data.meta || null, { backfill: first, source: source });
    }
  };

  LogStream.prototype._status = function (data) {
    if (!data || !data.job) return;
    this.jobStatus[data.job.id] = data.job.status;
    this._emit("onStatus", data);
  };

  LogStream.prototype._end = function (data) {
    this.endPayload = data;
    var jobs = data.jobs || (data.job ? [data.job] : []);
    var self = this;
    jobs.forEach(function (j) { self.jobStatus[j.id] = j.status; });
    this._shutdown();
    this._setState("ended");
    this._emit("onEnd", data);
  };

  // --- polling fallback ----------------------------------------------------------------

  LogStream.prototype._startPolling = function () {
    if (this._closed) return;
    if (!this._polling) {
      this._polling = true;
      if (this.state !== "polling" && this.state !== "disconnected") this._setState("reconnecting");
      this._poll();
    }
  };

  LogStream.prototype._schedulePoll = function (ms) {
    if (this._polling && !this._closed) this._timer("poll", ms, this._poll);
  };

  LogStream.prototype._fetchJson = function (url) {
    return this._fetch(url, {
      credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store"
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        return { status: response.status, ok: response.ok, body: body };
      });
    });
  };

  LogStream.prototype._poll = function () {
    var self = this;
    if (!this._polling || this._closed || this._pollBusy || !this._fetch) return;
    this._pollBusy = true;
    var url = this.pollUrl();
    this._fetchJson(url).then(function (res) {
      self._pollBusy = false;
      if (self._closed || !self._polling) return;
      if (res.status === 401) {
        self._setState("disconnected");
        self._emit("onAuthError");
        self._schedulePoll(self.options.pollInterval * 3);
        return;
      }
      if (res.status === 404 && self.filters.scope === "job") {
        self._end({ job: { id: self.filters.jobIds[0], status: "deleted" } });
        return;
      }
      if (!res.ok) {
        self._pollFailed(res.body && res.body.error);
        return;
      }
      var recovered = self._pollOk === false;
      self._pollOk = true;
      self._receive(res.body, "poll");
      if (!self._polling) return;  // the stream came back meanwhile
      self._setState("polling");
      if (recovered && !self._es) self.reconnectNow();  // the server is back: stream again
      var more = res.body && res.body.meta && res.body.meta.has_more && self.lastId !== null;
      var next = more ? 0 : self.options.pollInterval;
      if (self.filters.scope === "job" && self.options.pollStatus && !more) {
        self._pollStatuses().then(function () { self._schedulePoll(next); });
      } else {
        self._schedulePoll(next);
      }
    }, function () {
      self._pollBusy = false;
      self._pollFailed();
    });
  };

  LogStream.prototype._pollFailed = function (message) {
    if (this._closed || !this._polling) return;
    this._pollOk = false;
    if (!this._es || this.state !== "connected") this._setState("disconnected");
    if (message) this._emit("onError", message);
    this._schedulePoll(this.options.pollInterval);
  };

  /** Job scope, while polling: each job's status (a `status` event stand-in), and the
   * end once every job has finished and its lines were read. */
  LogStream.prototype._pollStatuses = function () {
    var self = this;
    var o = this.options;
    return Promise.all(this.filters.jobIds.map(function (id) {
      return self._fetchJson(o.baseUrl + o.jobPath + encodeURIComponent(id)).then(function (res) {
        if (res.status === 404) return { job: { id: id, status: "deleted" }, steps: [] };
        if (!res.ok || !res.body || !res.body.id) return null;
        return {
          job: { id: res.body.id, status: res.body.status },
          steps: (res.body.steps || []).map(function (s) { return { id: s.id, name: s.name, status: s.status }; })
        };
      }, function () { return null; });
    })).then(function (payloads) {
      if (self._closed || !self._polling) return;
      var all = payloads.length > 0;
      payloads.forEach(function (p) {
        if (!p) { all = false; return; }
        var sig = JSON.stringify(p);
        if (self._statusSig[p.job.id] !== sig) {   // the job or one of its steps changed
          self._statusSig[p.job.id] = sig;
          self._status(p);
        }
        if (!isFinished(p.job.status)) all = false;
      });
      if (all) {
        // one last read: lines committed before the status changed
        return self._fetchJson(self.pollUrl()).then(function (res) {
          if (self._closed) return;
          if (res.ok) self._receive(res.body, "poll");
          if (res.ok && !(res.body.meta && res.body.meta.has_more)) {
            var jobs = payloads.map(function (p) { return p.job; });
            self._end(jobs.length === 1 ? { job: jobs[0] } : { job: jobs[jobs.length - 1], jobs: jobs });
          }
        }, function () {});
      }
    });
  };

  // --- factories -----------------------------------------------------------------------

  function createJobStream(jobId, options) {
    var o = Object.assign({}, options || {});
    if (Array.isArray(jobId)) o.jobIds = jobId;
    else o.jobId = jobId;
    o.scope = "job";
    return new LogStream(o);
  }

  function createServiceStream(options) {
    var o = Object.assign({}, options || {});
    o.scope = "service";
    delete o.jobId;
    delete o.jobIds;
    delete o.step;
    return new LogStream(o);
  }

  // QuaeroLogs: the stream client and the pure helpers it is built on
  return Object.assign({}, F, B, {
    DEFAULTS: DEFAULTS,
    LogStream: LogStream,
    createJobStream: createJobStream,
    createServiceStream: createServiceStream
  });
});
