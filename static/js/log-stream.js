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
 * The pure parts (query building, backoff, the bounded buffer, ANSI parsing) are plain
 * functions, also exported for node's test runner.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root);
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api;
  }
  if (root && typeof root.document !== "undefined") {
    root.QuaeroLogs = api;
  }
})(typeof window !== "undefined" ? window : (typeof globalThis !== "undefined" ? globalThis : this),
function (root) {
  "use strict";

  var LEVELS = ["debug", "info", "warn", "error"];
  var LEVEL_ALIASES = { warning: "warn" };
  var MAX_JOB_IDS = 50;
  var FINISHED = ["completed", "failed", "cancelled", "deleted"];

  // --- query building ------------------------------------------------------------------

  function normalizeLevel(level) {
    if (level === undefined || level === null || level === "") return null;
    var value = String(level).trim().toLowerCase();
    value = LEVEL_ALIASES[value] || value;
    if (LEVELS.indexOf(value) < 0) {
      throw new RangeError("level must be one of " + LEVELS.join(", ") + ": " + level);
    }
    return value;
  }

  function nonNegativeInt(value, name) {
    if (value === undefined || value === null || value === "") return null;
    var n = typeof value === "string" && /^[0-9]+$/.test(value.trim()) ? Number(value) : value;
    if (typeof n !== "number" || !isFinite(n) || Math.floor(n) !== n || n < 0) {
      throw new RangeError(name + " must be a non-negative integer: " + value);
    }
    return n;
  }

  function jobIdsOf(filters) {
    var ids = [];
    var add = function (id) {
      if (id === undefined || id === null || id === "") return;
      id = String(id);
      if (ids.indexOf(id) < 0) ids.push(id);
    };
    if (Array.isArray(filters.jobIds)) filters.jobIds.forEach(add);
    else add(filters.jobIds);
    add(filters.jobId);
    return ids;
  }

  /**
   * The query string for `/api/logs/stream` and `/api/logs` from
   * `{scope, jobId | jobIds, step, level, limit, after, before}`. Empty values are left
   * out; `job_id` is repeated for several jobs; invalid values throw (a 400 from the
   * server would be invisible to an EventSource).
   */
  function buildQueryParams(filters) {
    filters = filters || {};
    var ids = jobIdsOf(filters);
    var scope = filters.scope || (ids.length ? "job" : "service");
    if (scope !== "service" && scope !== "job") {
      throw new RangeError("scope must be 'service' or 'job': " + scope);
    }
    var params = new URLSearchParams();
    params.append("scope", scope);
    if (scope === "job") {
      if (!ids.length) throw new RangeError("scope=job needs a job id");
      if (ids.length > MAX_JOB_IDS) throw new RangeError("at most " + MAX_JOB_IDS + " job ids");
      ids.forEach(function (id) { params.append("job_id", id); });
      if (filters.step) params.append("step", String(filters.step));
    } else if (ids.length || filters.step) {
      throw new RangeError("job_id and step are only allowed with scope=job");
    }
    var level = normalizeLevel(filters.level);
    if (level) params.append("level", level);
    ["limit", "after", "before"].forEach(function (name) {
      var value = nonNegativeInt(filters[name], name);
      if (value !== null) params.append(name, String(value));
    });
    return params.toString();
  }

  // --- backoff -------------------------------------------------------------------------

  /**
   * Milliseconds to wait before reconnect attempt number `attempt` (0 first):
   * `base * factor^attempt`, capped at `max`, minus a random share of up to `jitter`
   * (0.5: anywhere in the upper half), so that many clients do not reconnect in step.
   */
  function backoffDelay(attempt, options) {
    options = options || {};
    var base = options.base !== undefined ? options.base : 1000;
    var max = options.max !== undefined ? options.max : 30000;
    var factor = options.factor !== undefined ? options.factor : 2;
    var jitter = options.jitter !== undefined ? options.jitter : 0.5;
    var random = options.random || Math.random;
    attempt = Math.max(0, Math.floor(attempt) || 0);
    var exp = Math.min(max, base * Math.pow(factor, Math.min(attempt, 64)));
    jitter = Math.min(1, Math.max(0, jitter));
    return Math.round(exp * (1 - jitter * random()));
  }

  // --- the bounded buffer --------------------------------------------------------------

  /**
   * The newest `max` lines, in id order. `push` takes lines oldest first and keeps only
   * those newer than any seen before (so a resumed stream, or a poll racing the stream,
   * never repeats a line); `prepend` adds older lines ("load older") while there is room.
   */
  function LineBuffer(max) {
    this.max = max === undefined ? 1000 : Math.max(1, max);
    this.lines = [];
    this.lastId = null;
    this.dropped = 0;   // lines pushed out of the front, so far
  }

  LineBuffer.prototype.push = function (lines) {
    var accepted = [];
    for (var i = 0; i < (lines ? lines.length : 0); i++) {
      var line = lines[i];
      if (!line || typeof line.id !== "number") continue;
      if (this.lastId !== null && line.id <= this.lastId) continue;
      this.lastId = line.id;
      accepted.push(line);
    }
    if (!accepted.length) return accepted;
    if (accepted.length >= this.max) {
      this.dropped += this.lines.length + accepted.length - this.max;
      this.lines = accepted.slice(accepted.length - this.max);
    } else {
      Array.prototype.push.apply(this.lines, accepted);
      var over = this.lines.length - this.max;
      if (over > 0) {
        this.lines.splice(0, over);
        this.dropped += over;
      }
    }
    return accepted;
  };

  LineBuffer.prototype.prepend = function (older) {
    var first = this.lines.length ? this.lines[0].id : (this.lastId === null ? Infinity : this.lastId + 1);
    var fit = [];
    for (var i = 0; i < (older ? older.length : 0); i++) {
      if (older[i] && older[i].id < first) fit.push(older[i]);
    }
    fit.sort(function (a, b) { return a.id - b.id; });
    var room = this.max - this.lines.length;
    if (room <= 0) return [];
    if (fit.length > room) fit = fit.slice(fit.length - room);
    this.lines = fit.concat(this.lines);
    if (this.lastId === null && fit.length) this.lastId = fit[fit.length - 1].id;
    return fit;
  };

  /** Forget the lines, not the position: what was seen is not shown again. */
  LineBuffer.prototype.clear = function () {
    this.lines = [];
  };

  LineBuffer.prototype.reset = function () {
    this.lines = [];
    this.lastId = null;
    this.dropped = 0;
  };

  Object.defineProperty(LineBuffer.prototype, "length", {
    get: function () { return this.lines.length; }
  });

  LineBuffer.prototype.toArray = function () {
    return this.lines.slice();
  };

  // --- ANSI colour codes ---------------------------------------------------------------

  var CUBE = [0, 95, 135, 175, 215, 255];

  function hex2(n) {
    var s = Math.max(0, Math.min(255, n | 0)).toString(16);
    return s.length < 2 ? "0" + s : s;
  }

  function color256(n) {
    if (n < 16) return n;                              // a theme colour (CSS class)
    if (n < 232) {
      n -= 16;
      return "#" + hex2(CUBE[Math.floor(n / 36)]) + hex2(CUBE[Math.floor(n / 6) % 6]) + hex2(CUBE[n % 6]);
    }
    var g = 8 + (n - 232) * 10;
    return "#" + hex2(g) + hex2(g) + hex2(g);
  }

  // CSI ... final byte, OSC ... BEL/ST, and lone two-byte escapes
  var ESCAPES = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;

  function applySgr(style, params) {
    var codes = params === "" ? [0] : params.split(/[;:]/).map(function (p) { return p === "" ? 0 : Number(p); });
    for (var i = 0; i < codes.length; i++) {
      var c = codes[i];
      if (c === 0) { style = {}; }
      else if (c === 1) style.bold = true;
      else if (c === 2) style.dim = true;
      else if (c === 3) style.italic = true;
      else if (c === 4) style.underline = true;
      else if (c === 7) style.inverse = true;
      else if (c === 9) style.strike = true;
      else if (c === 22) { delete style.bold; delete style.dim; }
      else if (c === 23) delete style.italic;
      else if (c === 24) delete style.underline;
      else if (c === 27) delete style.inverse;
      else if (c === 29) delete style.strike;
      else if (c >= 30 && c <= 37) style.fg = c - 30;
      else if (c >= 90 && c <= 97) style.fg = c - 90 + 8;
      else if (c === 39) delete style.fg;
      else if (c >= 40 && c <= 47) style.bg = c - 40;
      else if (c >= 100 && c <= 107) style.bg = c - 100 + 8;
      else if (c === 49) delete style.bg;
      else if (c === 38 || c === 48) {
        var key = c === 38 ? "fg" : "bg";
        if (codes[i + 1] === 5 && i + 2 < codes.length) {
          style[key] = color256(Math.max(0, Math.min(255, codes[i + 2])));
          i += 2;
        } else if (codes[i + 1] === 2 && i + 4 < codes.length) {
          style[key] = "#" + hex2(codes[i + 2]) + hex2(codes[i + 3]) + hex2(codes[i + 4]);
          i += 4;
        } else {
          break;
        }
      }
    }
    return style;
  }

  /**
   * Text with ANSI escapes as segments `{text, style}`; `style` may hold `fg`/`bg` (0-15:
   * a theme colour, or "#rrggbb"), `bold`, `dim`, `italic`, `underline`, `inverse`,
   * `strike`. Only SGR (`ESC[...m`) changes style; every other escape is dropped. The
   * segments are plain text: the renderer puts them into the DOM with `textContent`.
   */
  function parseAnsi(text) {
    text = text === undefined || text === null ? "" : String(text);
    var segments = [];
    var style = {};
    if (text.indexOf("\x1b") < 0) {
      return text ? [{ text: text, style: {} }] : [];
    }
    var last = 0;
    var m;
    ESCAPES.lastIndex = 0;
    while ((m = ESCAPES.exec(text)) !== null) {
      if (m.index > last) segments.push({ text: text.slice(last, m.index), style: style });
      last = ESCAPES.lastIndex;
      if (m[2] === "m") style = applySgr(Object.assign({}, style), m[1]);
      if (m[0] === "") ESCAPES.lastIndex++;
    }
    if (last < text.length) segments.push({ text: text.slice(last), style: style });
    return segments;
  }

  function stripAnsi(text) {
    return parseAnsi(text).map(function (s) { return s.text; }).join("");
  }

  // The words a producer starts a line with to name its level (as the runner reads them).
  var LEVEL_WORDS = { trace: "debug", debug: "debug", dbg: "debug", info: "info", notice: "info",
    warn: "warn", warning: "warn", error: "error", err: "error", fatal: "error",
    critical: "error", crit: "error" };
  var SGR = "(?:\x1b\\[[0-9;]*m)*";
  var LEVEL_WORD_RE = new RegExp("^(" + SGR + ")[ \t]{0,8}(?:\\[[ \t]*([A-Za-z]{3,8})[ \t]*\\]" +
    "|<([A-Za-z]{3,8})>|([A-Za-z]{3,8})(" + SGR + ")[ \t]*:|([A-Z]{3,8})(?=" + SGR + "(?:[ \t]|$)))" +
    "(" + SGR + ")[ \t]*");

  /**
   * `message` without the level word it starts with (`ERROR: x`, `[debug] x`, `WARNING x`,
   * colour codes around it kept) when that word names `level`: the page shows the level
   * once, as its badge. Any other message is returned as it is.
   */
  function dropLevelWord(message, level) {
    message = message === undefined || message === null ? "" : String(message);
    var m = LEVEL_WORD_RE.exec(message);
    if (!m) return message;
    var word = (m[2] || m[3] || m[4] || m[6]).toLowerCase();
    var rest = message.slice(m[0].length);
    if (LEVEL_WORDS[word] !== level || !stripAnsi(rest).trim()) return message;
    return m[1] + (m[5] || "") + m[7] + rest;
  }

  // --- search and formatting helpers ---------------------------------------------------

  /** `[start, end)` ranges of `query` in `text`, case-insensitive, not overlapping. */
  function findMatches(text, query) {
    var ranges = [];
    if (!query) return ranges;
    var hay = String(text).toLowerCase();
    var needle = String(query).toLowerCase();
    var from = 0;
    var at;
    while ((at = hay.indexOf(needle, from)) >= 0) {
      ranges.push([at, at + needle.length]);
      from = at + needle.length;
    }
    return ranges;
  }

  /** "850 ms", "12.3 s", "4m 05s", "2h 03m". */
  function formatDuration(ms) {
    if (ms === null || ms === undefined || !isFinite(ms) || ms < 0) return "";
    if (ms < 1000) return Math.round(ms) + " ms";
    var s = ms / 1000;
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
    var total = Math.round(s);
    var h = Math.floor(total / 3600);
    var m = Math.floor((total % 3600) / 60);
    var sec = total % 60;
    var pad = function (n) { return n < 10 ? "0" + n : String(n); };
    return h ? h + "h " + pad(m) + "m" : m + "m " + pad(sec) + "s";
  }

  function isFinished(status) {
    return FINISHED.indexOf(status) >= 0;
  }

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
   * Options: the filter (`scope`, `jobId`/`jobIds`, `step`, `level`, `limit`), `after` (a
   * line id to resume after instead of the backfill), the tunables in DEFAULTS and the
   * callbacks `onLines(lines, meta, info)`, `onStatus(payload)`, `onEnd(payload)`,
   * `onState(state, previous)`, `onAuthError()`, `onError(message)`.
   *
   * States: idle, connecting, connected, reconnecting, polling, disconnected, ended, closed.
   */
  function LogStream(options) {
    var o = Object.assign({}, DEFAULTS, options || {});
    this.options = o;
    this.filters = {
      scope: o.scope, jobIds: jobIdsOf(o), step: o.step || null,
      level: normalizeLevel(o.level) || "info", limit: Math.max(1, o.limit | 0)
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

  return {
    LEVELS: LEVELS,
    MAX_JOB_IDS: MAX_JOB_IDS,
    DEFAULTS: DEFAULTS,
    buildQueryParams: buildQueryParams,
    normalizeLevel: normalizeLevel,
    backoffDelay: backoffDelay,
    LineBuffer: LineBuffer,
    LogStream: LogStream,
    createJobStream: createJobStream,
    createServiceStream: createServiceStream,
    parseAnsi: parseAnsi,
    stripAnsi: stripAnsi,
    dropLevelWord: dropLevelWord,
    color256: color256,
    findMatches: findMatches,
    formatDuration: formatDuration,
    isFinished: isFinished
  };
});
