/*
 * Pure parts of following a log (no DOM, no network): the query string of a filter, the
 * reconnect backoff, and the bounded buffer that keeps each line once. `QuaeroQuery`.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroFormat || require("./log-format.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroQuery = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, F) {
  "use strict";

  var LEVELS = F.LEVELS;
  var LEVEL_ALIASES = { warning: "warn" };
  var MAX_JOB_IDS = 50;

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

  var MAX_Q = 200;

  /** The search text `q` as sent (literal, untrimmed), null when empty; too long throws. */
  function searchText(q) {
    if (q === undefined || q === null || q === "") return null;
    q = String(q);
    if (q.length > MAX_Q) throw new RangeError("q must be at most " + MAX_Q + " characters");
    return q;
  }

  var MAX_ATTR_FILTERS = 20;
  var MAX_ATTR_KEY = 128;
  var TRACE_ID = /^[0-9a-f]{32}$/;

  /**
   * The attribute filters as `[key, value]` pairs, values as text, each pair once, in
   * order; from pairs or `{key, value}` objects. A key of 1-128 characters, at most 20
   * filters (the server's limits), else a RangeError.
   */
  function attrPairs(attrs) {
    var out = [];
    var seen = {};
    (attrs || []).forEach(function (a) {
      var key = Array.isArray(a) ? a[0] : a && a.key;
      var value = Array.isArray(a) ? a[1] : a && a.value;
      key = key === undefined || key === null ? "" : String(key);
      value = value === undefined || value === null ? "" : String(value);
      if (!key.length || key.length > MAX_ATTR_KEY) {
        throw new RangeError("an attribute name must be 1 to " + MAX_ATTR_KEY + " characters");
      }
      var id = JSON.stringify([key, value]);
      if (seen[id]) return;
      seen[id] = true;
      out.push([key, value]);
    });
    if (out.length > MAX_ATTR_FILTERS) throw new RangeError("at most " + MAX_ATTR_FILTERS + " attribute filters");
    return out;
  }

  /** A trace id filter as sent (32 lowercase hex digits), null when empty; else a RangeError. */
  function traceIdOf(value) {
    if (value === undefined || value === null || value === "") return null;
    var id = String(value).trim().toLowerCase();
    if (!TRACE_ID.test(id)) throw new RangeError("trace_id must be 32 hex digits: " + value);
    return id;
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
   * `{scope, jobId | jobIds, step, level, q, attrs, traceId, limit, after, before}`
   * (`attrs`: `[key, value]` pairs, sent as `attr.KEY=VALUE`). Empty values are left
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
    var q = searchText(filters.q);
    if (q) params.append("q", q);
    attrPairs(filters.attrs).forEach(function (p) { params.append("attr." + p[0], p[1]); });
    var trace = traceIdOf(filters.traceId);
    if (trace) params.append("trace_id", trace);
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

  return {
    MAX_JOB_IDS: MAX_JOB_IDS,
    normalizeLevel: normalizeLevel,
    nonNegativeInt: nonNegativeInt,
    jobIdsOf: jobIdsOf,
    searchText: searchText,
    MAX_Q: MAX_Q,
    attrPairs: attrPairs,
    traceIdOf: traceIdOf,
    buildQueryParams: buildQueryParams,
    backoffDelay: backoffDelay,
    LineBuffer: LineBuffer
  };
});
