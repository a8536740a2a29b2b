/*
 * QueueSSEManager: the /queue page follows any number of jobs over ONE EventSource.
 * `QuaeroQueueStreams`; needs log-stream.js and log-http.js.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroLogs || require("./log-stream.js"), root.QuaeroHttp || require("./log-http.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroQueueStreams = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, Q, H) {
  "use strict";

  var toLogin = H.toLogin;

  // --- QueueSSEManager -----------------------------------------------------------------

  /**
   * Follows any number of jobs over ONE EventSource (`job_id` repeated, up to 50 per
   * stream; beyond that a second stream). Each change of the set of jobs reopens the
   * stream once (changes within `debounce` ms are taken together); every job gets its
   * tail from the new stream's backfill and, per job, lines it already had are dropped,
   * so a job's handlers see each line once. A gap (more than `limit` lines of a job
   * arriving while the stream was reopened) is filled from `GET /api/logs`.
   *
   * connectJob(jobId, {onLines(lines, info), onStatus(payload), onEnd(job), onState(state)})
   */
  function QueueSSEManager(options) {
    this.options = Object.assign({ level: "debug", limit: 200, debounce: 40,
      streamOptions: {}, onState: null, onAuthError: toLogin }, options || {});
    this.jobs = new Map();
    this.groups = [];            // [{ids: [...], stream}]
    this.state = "idle";
    this._timer = null;
  }

  QueueSSEManager.prototype.connectJob = function (jobId, handlers) {
    jobId = String(jobId);
    var entry = this.jobs.get(jobId);
    if (entry) {
      entry.handlers = handlers || {};
      return entry;
    }
    entry = { id: jobId, handlers: handlers || {}, lastId: null, holding: null, status: null };
    this.jobs.set(jobId, entry);
    this._schedule();
    return entry;
  };

  QueueSSEManager.prototype.disconnectJob = function (jobId) {
    if (this.jobs.delete(String(jobId))) this._schedule();
  };

  QueueSSEManager.prototype.disconnectAll = function () {
    this.jobs.clear();
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
    this._apply();
  };

  Object.defineProperty(QueueSSEManager.prototype, "jobIds", {
    get: function () { return Array.from(this.jobs.keys()); }
  });

  Object.defineProperty(QueueSSEManager.prototype, "streamCount", {
    get: function () { return this.groups.filter(function (g) { return g.stream; }).length; }
  });

  QueueSSEManager.prototype._schedule = function () {
    var self = this;
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = setTimeout(function () { self._timer = null; self._apply(); }, this.options.debounce);
  };

  QueueSSEManager.prototype._setState = function () {
    var states = this.groups.map(function (g) { return g.stream ? g.stream.state : "idle"; });
    var order = ["disconnected", "reconnecting", "connecting", "polling", "connected", "ended", "closed", "idle"];
    var state = "idle";
    for (var i = 0; i < order.length; i++) {
      if (states.indexOf(order[i]) >= 0) { state = order[i]; break; }
    }
    if (state !== this.state) {
      this.state = state;
      if (this.options.onState) this.options.onState(state);
    }
    this.jobs.forEach(function (entry) {
      var g = entry.group;
      var s = g && g.stream ? g.stream.state : state;
      if (entry.handlers.onState) entry.handlers.onState(s);
    });
  };

  /** Reopen the streams for the current set of jobs (stream per 50 jobs). */
  QueueSSEManager.prototype._apply = function () {
    var self = this;
    var ids = this.jobIds;
    var size = Q.MAX_JOB_IDS;
    var wanted = [];
    for (var i = 0; i < ids.length; i += size) wanted.push(ids.slice(i, i + size));
    var keep = [];
    this.groups.forEach(function (g, idx) {
      var same = wanted[idx] && wanted[idx].join("\n") === g.ids.join("\n");
      if (same && g.stream && g.stream.state !== "closed") {
        keep[idx] = g;
      } else if (g.stream) {
        g.stream.close();
        g.stream = null;
      }
    });
    this.groups = wanted.map(function (groupIds, idx) {
      if (keep[idx]) return keep[idx];
      var g = { ids: groupIds, stream: null };
      groupIds.forEach(function (id) { self.jobs.get(id).group = g; });
      g.stream = Q.createJobStream(groupIds, Object.assign({}, self.options.streamOptions, {
        level: self.options.level, limit: self.options.limit,
        onLines: function (lines, meta, info) { if (g.stream) self._route(g, lines, info); },
        onStatus: function (payload) { self._status(payload); },
        onEnd: function (payload) { self._end(payload); },
        onState: function () { self._setState(); },
        onAuthError: self.options.onAuthError
      }));
      g.stream.start();
      return g;
    });
    this._setState();
  };

  QueueSSEManager.prototype._route = function (group, lines, info) {
    var self = this;
    var byJob = new Map();
    lines.forEach(function (line) {
      if (!byJob.has(line.job_id)) byJob.set(line.job_id, []);
      byJob.get(line.job_id).push(line);
    });
    byJob.forEach(function (jobLines, jobId) {
      var entry = self.jobs.get(jobId);
      if (!entry || entry.group !== group) return;
      if (entry.holding) {                 // a gap is being filled: keep the order
        Array.prototype.push.apply(entry.holding, jobLines);
        return;
      }
      var seen = entry.lastId;
      var fresh = seen === null ? jobLines : jobLines.filter(function (l) { return l.id > seen; });
      if (info.backfill && seen !== null && fresh.length === jobLines.length &&
          jobLines.length >= self.options.limit) {
        // The whole tail is new to us: lines between may be missing. Fetch them first.
        self._fillGap(entry, seen, fresh[0].id, fresh);
        return;
      }
      self._deliver(entry, fresh, info);
    });
  };

  QueueSSEManager.prototype._deliver = function (entry, lines, info) {
    if (entry.lastId !== null) {
      var seen = entry.lastId;
      lines = lines.filter(function (l) { return l.id > seen; });
    }
    if (!lines.length && !(info && info.backfill && entry.lastId === null)) return;
    if (lines.length) entry.lastId = lines[lines.length - 1].id;
    if (entry.handlers.onLines) entry.handlers.onLines(lines, info || {});
  };

  QueueSSEManager.prototype._fillGap = function (entry, after, before, held) {
    var self = this;
    entry.holding = held.slice();
    var gap = [];
    var page = function (from) {
      var q = Q.buildQueryParams({ scope: "job", jobId: entry.id, level: self.options.level,
        after: from, before: before, limit: 5000 });
      return root.fetch("/api/logs?" + q, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : { logs: [] }; })
        .then(function (body) {
          var got = body.logs || [];
          Array.prototype.push.apply(gap, got);
          if (body.meta && body.meta.has_more && got.length) return page(got[got.length - 1].id);
        });
    };
    page(after).catch(function () {}).then(function () {
      var all = gap.concat(entry.holding || []);
      entry.holding = null;
      if (self.jobs.get(entry.id) === entry) self._deliver(entry, all, { backfill: false });
    });
  };

  QueueSSEManager.prototype._status = function (payload) {
    var entry = payload && payload.job && this.jobs.get(payload.job.id);
    if (!entry) return;
    entry.status = payload.job.status;
    if (entry.handlers.onStatus) entry.handlers.onStatus(payload);
  };

  QueueSSEManager.prototype._end = function (payload) {
    var self = this;
    var jobs = payload.jobs || (payload.job ? [payload.job] : []);
    jobs.forEach(function (job) {
      var entry = self.jobs.get(job.id);
      if (entry && entry.handlers.onEnd) entry.handlers.onEnd(job);
    });
    this._setState();
  };

  var sharedManager = null;
  QueueSSEManager.shared = function () {
    if (!sharedManager) sharedManager = new QueueSSEManager();
    return sharedManager;
  };

  return { QueueSSEManager: QueueSSEManager };
});
