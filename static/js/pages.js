/*
 * The home page (quaeroHome), the queue (quaeroQueue and its expanded rows, queueJobLog)
 * and the header (quaeroShell). `QuaeroPages`; needs log-stream.js, log-http.js,
 * log-view.js and queue-streams.js.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroLogs || require("./log-stream.js"), root.QuaeroHttp || require("./log-http.js"), root.QuaeroView || require("./log-view.js"), root.QuaeroQueueStreams || require("./queue-streams.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroPages = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, Q, H, V, S) {
  "use strict";

  var doc = root.document;
  var apiFetch = H.apiFetch;
  var QueueSSEManager = S.QueueSSEManager;
  var mixin = V.withConnectionState;
  var rememberPrefs = V.rememberPrefs;

  // --- Alpine: pages -------------------------------------------------------------------

  function jobHelpers(target) {
    target.duration = function (job) { return Q.durationOf(job, this.now); };
    target.ago = function (iso) { return Q.timeAgo(iso, this.now); };
    target.when = Q.formatDateTime;
    target.jobUrl = function (job) { return "/jobs/" + encodeURIComponent(job.id); };
    target.errorCount = function (job) { return (job.log_counts && job.log_counts.error) || 0; };
    /** The last error's message as text: its colour codes (ANSI) dropped, not shown raw. */
    target.lastError = function (job) { return job.last_error ? Q.stripAnsi(job.last_error.message) : ""; };
    target.lastErrorTitle = function (job) {
      return job.last_error ? "Last error, line " + job.last_error.line_number + ": " + this.lastError(job) : "";
    };
    target.errorLink = function (job) {
      return job.last_error ? this.jobUrl(job) + "#L" + job.last_error.line_number : this.jobUrl(job);
    };
    target.lineTotal = function (job) {
      var c = job.log_counts || {};
      return (c.debug || 0) + (c.info || 0) + (c.warn || 0) + (c.error || 0);
    };
    return target;
  }

  function merge(list, fresh) {
    var byId = new Map(list.map(function (j) { return [j.id, j]; }));
    return fresh.map(function (job) {
      var old = byId.get(job.id);
      if (old) { Object.assign(old, job); return old; }
      return job;
    });
  }

  function quaeroHome() {
    var timers = [];
    return jobHelpers({
      running: [],
      recent: [],
      definitions: [],
      loaded: false,
      error: "",
      message: "",
      starting: "",
      now: Date.now(),
      init: function () {
        var self = this;
        this.refresh();
        this.loadDefinitions();
        timers.push(setInterval(function () { if (!doc.hidden) self.refresh(); }, 4000));
        timers.push(setInterval(function () { self.now = Date.now(); }, 1000));
      },
      destroy: function () { timers.forEach(clearInterval); },
      refresh: function () {
        var self = this;
        return Promise.all([
          apiFetch("/api/jobs?status=running&limit=50"),
          apiFetch("/api/jobs?limit=10")
        ]).then(function (res) {
          if (res[0].ok) self.running = merge(self.running, res[0].body.jobs);
          if (res[1].ok) self.recent = merge(self.recent, res[1].body.jobs);
          self.error = res[0].ok && res[1].ok ? "" : "Could not load jobs (" + res[1].status + ").";
          self.loaded = true;
        }, function () { self.error = "The server cannot be reached."; });
      },
      loadDefinitions: function () {
        var self = this;
        return apiFetch("/api/job-definitions").then(function (res) {
          if (res.ok) self.definitions = res.body.definitions || [];
        }, function () {});
      },
      run: function (def) {
        var self = this;
        this.starting = def.name;
        this.message = "";
        return apiFetch("/api/jobs", { method: "POST", json: { definition: def.name } }).then(function (res) {
          self.starting = "";
          if (res.ok && res.body.id) root.location.assign("/jobs/" + encodeURIComponent(res.body.id));
          else self.message = "Could not start " + def.name + ": " + ((res.body && res.body.error) || res.status);
        }, function () { self.starting = ""; self.message = "The server cannot be reached."; });
      }
    });
  }

  function quaeroQueue() {
    var timers = [];
    return jobHelpers({
      jobs: [],
      total: 0,
      status: "",
      limit: 50,
      expanded: {},
      loaded: false,
      error: "",
      now: Date.now(),
      statuses: ["pending", "running", "completed", "failed", "cancelled"],
      init: function () {
        var self = this;
        this.refresh();
        timers.push(setInterval(function () { if (!doc.hidden) self.refresh(); }, 3000));
        timers.push(setInterval(function () { self.now = Date.now(); }, 1000));
      },
      destroy: function () {
        timers.forEach(clearInterval);
        QueueSSEManager.shared().disconnectAll();
      },
      refresh: function () {
        var self = this;
        var q = "limit=" + this.limit + (this.status ? "&status=" + encodeURIComponent(this.status) : "");
        return apiFetch("/api/jobs?" + q).then(function (res) {
          if (!res.ok) { self.error = "Could not load jobs (" + res.status + ")."; return; }
          self.error = "";
          self.jobs = merge(self.jobs, res.body.jobs);
          self.total = res.body.total;
          self.loaded = true;
        }, function () { self.error = "The server cannot be reached."; });
      },
      setStatus: function () { this.jobs = []; this.loaded = false; this.refresh(); },
      more: function () { this.limit += 50; this.refresh(); },
      isOpen: function (id) { return !!this.expanded[id]; },
      toggle: function (id) { this.expanded[id] = !this.expanded[id]; },
      onJobStatus: function (detail) {
        this.jobs.forEach(function (job) { if (job.id === detail.id) job.status = detail.status; });
      }
    });
  }

  /** The header: nothing but the login state for now. */
  function quaeroShell() {
    return {};
  }

  /**
   * A job's row on /queue, expanded: a flat list of its latest lines fed by the page's
   * QueueSSEManager (one EventSource for every open row); the level is a CSS filter.
   * `options.manager`: another manager than the page's shared one.
   */
  function queueJobLog(jobId, options) {
    options = options || {};
    var view = null;
    var manager = null;
    // No `job` here: the row lives inside the queue's x-for, whose `job` is the row's job.
    return mixin({
      jobId: String(jobId),
      level: options.level || "debug",
      levels: Q.LEVELS,
      autoScroll: true,
      paused: false,
      showTimestamps: true,
      ended: false,
      lineCount: 0,

      init: function () {
        var self = this;
        rememberPrefs(this, "queueLog", ["showTimestamps"]);
        this.$refs.scroller.addEventListener("scroll", function () { self.onScroll(); }, { passive: true });
        view = new V.LogView({ root: this.$refs.lines, maxLines: 500, permalinks: true,
          jobLinks: true, showStep: true });
        this.$nextTick(function () { self.connect(); });
      },
      destroy: function () {
        if (manager) manager.disconnectJob(this.jobId);
      },
      connect: function () {
        var self = this;
        manager = options.manager && options.manager !== true ? options.manager : QueueSSEManager.shared();
        manager.connectJob(this.jobId, {
          onLines: function (lines) { self.onLines(lines); },
          onStatus: function (payload) {
            if (payload.job && Q.isFinished(payload.job.status)) self.finish();
            self.announce(payload.job);
          },
          onEnd: function (job) { self.finish(); self.announce(job); },
          onState: function (state) { self.state = self.ended ? "ended" : state; }
        });
      },
      onLines: function (lines) {
        var follow = this.autoScroll && !this.paused;
        view.append(lines);
        this.lineCount = view.length;
        if (follow) V.scrollToBottom(this.$refs.scroller);
      },
      finish: function () {
        this.ended = true;
        this.state = "ended";
      },
      announce: function (job) {
        if (job && job.id === this.jobId && this.$dispatch) {
          this.$dispatch("job-status", { id: this.jobId, status: job.status });
        }
      },
      onScroll: function () { this.paused = !V.atBottom(this.$refs.scroller); },
      clear: function () {
        view.clear();
        this.lineCount = 0;
      },
      toggleAutoScroll: function () {
        if (!this.autoScroll) return;
        this.paused = false;
        V.scrollToBottom(this.$refs.scroller);
      }
    });
  }

  return { quaeroHome: quaeroHome, quaeroQueue: quaeroQueue, queueJobLog: queueJobLog,
    quaeroShell: quaeroShell };
});
