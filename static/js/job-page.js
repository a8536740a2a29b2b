/*
 * The job page (/jobs/<id>): Alpine component `jobLogPage`. `QuaeroJobPage`; needs
 * log-stream.js, log-http.js, log-view.js, job-search.js (its search), log-groups.js
 * (folding), job-visuals.js (timeline, log volume, keys) and log-attrs.js (attribute
 * filters, kept in the address as ?attr.KEY=VALUE).
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroLogs || require("./log-stream.js"), root.QuaeroHttp || require("./log-http.js"), root.QuaeroView || require("./log-view.js"), root.QuaeroJobSearch || require("./job-search.js"),
    root.QuaeroGroups || require("./log-groups.js"), root.QuaeroJobVisuals || require("./job-visuals.js"),
    root.QuaeroAttrs || require("./log-attrs.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroJobPage = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, Q, H, V, S, G, JV, A) {
  "use strict";

  var doc = root.document;
  var F = Q;
  var LEVELS = Q.LEVELS;
  var LogView = V.LogView;
  var mixin = V.withConnectionState;
  var rememberPrefs = V.rememberPrefs;
  var atBottom = V.atBottom;
  var scrollToBottom = V.scrollToBottom;
  var apiFetch = H.apiFetch;
  var toLogin = H.toLogin;

  // --- Alpine: a job's log -------------------------------------------------------------

  var WINDOW = 3000;      // lines in the DOM on the job page, at most
  var TAIL = 1000;        // lines loaded at first, and per "load older"

  /**
   * The job page: one job's log with its steps as sections, search, permalinks, load
   * older, cancel and rerun. `options.job`: the job, else read from #job-data.
   */
  function jobLogPage(jobId, options) {
    options = options || {};
    var view = null;
    var stream = null;
    var catchUp = null;
    var refreshTimer = null;
    var stepBoxes = null;
    var tick = null;
    var folder = new G.GroupFolder();
    var data = mixin({
      jobId: String(jobId),
      level: options.level || "debug",
      levels: LEVELS,
      autoScroll: true,
      paused: false,
      moves: 0,           // the reader's jumps (a match, top, bottom): the last one wins
      showTimestamps: true,
      ended: false,
      lineCount: 0,
      totalCount: null,
      hasOlder: false,
      detached: false,
      newerCount: 0,
      loadingOlder: false,
      locating: false,
      collapsed: {},
      hasGeneral: false,
      message: "",
      busy: false,
      now: Date.now(),

      init: function () {
        var self = this;
        if (!this.job) {
          var data = doc.getElementById("job-data");
          if (data) this.job = JSON.parse(data.textContent);
        }
        rememberPrefs(this, "jobLog", ["showTimestamps", "wrap"]);
        this.readFilters();
        var box = this.$refs.scroller;
        box.addEventListener("scroll", function () { self.onScroll(); }, { passive: true });
        view = new LogView({
          root: this.$refs.lines, maxLines: WINDOW, lineIds: true, permalinks: true,
          showStep: false, containerFor: function (line) { return self.stepBox(line.step_name); },
          onAdded: function (recs, prepended, v) { folder.added(recs, prepended, v); },
          onFilter: function (field) { self.filterBy(field); }, traceUrl: this.traceUrl
        });
        tick = setInterval(function () { self.now = Date.now(); }, 1000);
        root.addEventListener("hashchange", function () { self.gotoHash(); });
        this.$nextTick(function () { self.connect(); });
      },

      destroy: function () {
        if (stream) stream.close();
        if (tick) clearInterval(tick);
        if (refreshTimer) clearTimeout(refreshTimer);
      },

      // steps (full mode)
      stepBox: function (name) {
        if (!stepBoxes) {
          stepBoxes = new Map();
          this.$root.querySelectorAll("[data-step-box]").forEach(function (el) {
            stepBoxes.set(el.getAttribute("data-step-box"), el);
          });
        }
        if (name && stepBoxes.has(name)) return stepBoxes.get(name);
        if (!this.hasGeneral) this.hasGeneral = true;
        return this.$refs.lines;
      },
      stepDuration: function (step) {
        return F.durationOf(step, this.now);
      },
      jobDuration: function () { return F.durationOf(this.job, this.now); },
      toggleStep: function (name) {
        this.collapsed[name] = !this.collapsed[name];
      },
      isFinished: function () { return this.job && Q.isFinished(this.job.status); },
      canCancel: function () { return this.job && (this.job.status === "pending" || this.job.status === "running"); },

      connect: function () {
        var self = this;
        if (stream) stream.close();
        view.clear();
        this.lineCount = 0;
        this.detached = false;
        this.newerCount = 0;
        stream = Q.createJobStream(this.jobId, {
          level: this.level, q: this.streamQ(), limit: TAIL, maxLines: 1000,
          attrs: this.filters.attrs, traceId: this.filters.traceId,
          onLines: function (lines, meta, info) { self.onLines(lines, meta, info); },
          onStatus: function (payload) { self.onStatus(payload); },
          onEnd: function (payload) { self.onEnd(payload); },
          onState: function (state) { self.state = state; },
          onAuthError: toLogin
        });
        stream.start();
      },

      onLines: function (lines, meta, info) {
        if (meta) this.totalCount = meta.total_count;
        if (info && info.backfill && meta) this.hasOlder = !!meta.has_more;
        this.linesArrived();
        if (catchUp) {
          Array.prototype.push.apply(catchUp, lines);
          return;
        }
        if (this.detached) {
          this.newerCount += lines.length;
          return;
        }
        var follow = this.autoScroll && !this.paused;
        if (!follow && view.length + lines.length > WINDOW) {
          // The reader is scrolled up in a full window: leave it still.
          this.detached = true;
          this.newerCount += lines.length;
          return;
        }
        var res = view.append(lines);
        if (res.trimmed) this.hasOlder = true;
        this.lineCount = view.length;
        if (follow) scrollToBottom(this.$refs.scroller);
        if (info && info.backfill) this.gotoHash(true);
      },

      onStatus: function (payload) {
        var self = this;
        if (this.job && payload.job) {
          this.job.status = payload.job.status;
          var byName = {};
          (payload.steps || []).forEach(function (s) { byName[s.name] = s.status; });
          (this.job.steps || []).forEach(function (s) {
            if (byName[s.name]) s.status = byName[s.name];
          });
        }
        if (this.$dispatch) this.$dispatch("job-status", { id: this.jobId, status: payload.job.status });
        if (refreshTimer) clearTimeout(refreshTimer);
        refreshTimer = setTimeout(function () { self.refreshJob(); }, 300);
      },

      onEnd: function (payload) {
        this.ended = true;
        this.state = "ended";
        if (payload && payload.job && payload.job.id === this.jobId) {
          if (this.job) this.job.status = payload.job.status;
          if (this.$dispatch) this.$dispatch("job-status", { id: this.jobId, status: payload.job.status });
        }
        this.refreshJob();
      },

      refreshJob: function () {
        var self = this;
        return apiFetch("/api/jobs/" + encodeURIComponent(this.jobId)).then(function (res) {
          if (res.ok) self.mergeJob(res.body);
        }, function () {});
      },

      /** Update the job in place: the step sections hold the lines and must stay. */
      mergeJob: function (fresh) {
        if (!fresh || !fresh.id) return;
        if (!this.job) { this.job = fresh; return; }
        var job = this.job;
        var byName = {};
        (job.steps || []).forEach(function (s) { byName[s.name] = s; });
        Object.keys(fresh).forEach(function (k) { if (k !== "steps") job[k] = fresh[k]; });
        (fresh.steps || []).forEach(function (s) {
          if (byName[s.name]) Object.assign(byName[s.name], s);
          else job.steps.push(s);
        });
      },

      onScroll: function () {
        var bottom = atBottom(this.$refs.scroller);
        this.paused = !bottom;
        if (bottom && this.detached && !catchUp && !this.locating) this.jumpToLatest();
      },

      setLevel: function () { this.connect(); },

      clear: function () {
        view.clear();
        if (stream) stream.buffer.clear();
        this.lineCount = 0;
        this.hasOlder = true;
      },

      toggleAutoScroll: function () {
        if (this.autoScroll) this.jumpToLatest();
      },

      pollQuery: function (extra) {
        return Q.buildQueryParams(Object.assign({ scope: "job", jobId: this.jobId, level: this.level,
          q: this.streamQ(), attrs: this.filters.attrs, traceId: this.filters.traceId }, extra));
      },

      /** The newest lines again, following. */
      jumpToLatest: function () {
        var self = this;
        this.paused = false;
        if (!this.detached) {
          scrollToBottom(this.$refs.scroller);
          return Promise.resolve();
        }
        catchUp = [];
        return apiFetch("/api/logs?" + this.pollQuery({ limit: TAIL })).then(function (res) {
          var queued = catchUp || [];
          catchUp = null;
          if (!res.ok) return;
          view.reset(res.body.logs || []);
          view.append(queued);
          self.hasOlder = !!(res.body.meta && res.body.meta.has_more);
          self.detached = false;
          self.newerCount = 0;
          self.lineCount = view.length;
          self.rematch();
          self.$nextTick(function () { scrollToBottom(self.$refs.scroller); });
        }, function () { catchUp = null; });
      },

      loadOlder: function () {
        var self = this;
        if (this.loadingOlder) return Promise.resolve();
        var before = view.firstId;
        if (before === null) before = stream && stream.lastId !== null ? stream.lastId + 1 : null;
        this.loadingOlder = true;
        var scroller = this.$refs.scroller;
        var height = scroller.scrollHeight;
        var top = scroller.scrollTop;
        return apiFetch("/api/logs?" + this.pollQuery({ limit: TAIL, before: before })).then(function (res) {
          self.loadingOlder = false;
          if (!res.ok) return;
          var logs = res.body.logs || [];
          var out = view.prepend(logs);
          self.hasOlder = !!(res.body.meta && res.body.meta.has_more);
          if (out.trimmed) { self.detached = true; self.paused = true; }
          self.lineCount = view.length;
          self.rematch();
          // keep the lines the reader was looking at in place
          scroller.scrollTop = top + (scroller.scrollHeight - height);
        }, function () { self.loadingOlder = false; });
      },

      // search: job-search.js; the highlights of the loaded lines follow new lines
      rematch: function () {
        if (view.query) view.setQuery(view.query);
      },

      /** Open the step and the group of `rec` and scroll it to the middle of the view;
       * resolves to `rec` once it is there (after Alpine has shown its step). */
      reveal: function (rec) {
        var self = this;
        var name = rec.line.step_name;
        var key = name && stepBoxes && stepBoxes.has(name) ? name : "";
        if (this.collapsed[key]) this.collapsed[key] = false;
        folder.reveal(rec);
        this.paused = true;
        var move = ++this.moves;
        return new Promise(function (resolve) {
          self.$nextTick(function () {
            if (move !== self.moves) return resolve(rec);  // a later jump ("g") came first
            rec.el.scrollIntoView({ block: "center" });
            // scrolling up is a pause; the scroll event says so
            self.paused = !atBottom(self.$refs.scroller);
            resolve(rec);
          });
        });
      },

      // permalinks: #L120
      gotoHash: function (quiet) {
        var m = /^#L([0-9]+)$/.exec(root.location.hash || "");
        if (!m) return;
        var n = Number(m[1]);
        var rec = view.findLine(n);
        if (rec) {
          view.highlight(rec);
          this.reveal(rec);
          return;
        }
        if (quiet === true && view.length === 0) return;
        this.locateLine(n);
      },

      /** A line outside the window: find its id by bisection over `after=`, then load
       * the window around it. */
      locateLine: function (n) {
        var self = this;
        if (this.locating) return;
        this.locating = true;
        this.message = "Finding line " + n + "…";
        var first = view.records[0];
        var lo = 0;
        var hi = first && first.line.line_number > n ? first.line.id - 1 : Number.MAX_SAFE_INTEGER;
        var found = null;
        var probe = function (after) {
          return apiFetch("/api/logs?" + self.pollQuery({ after: after, limit: 1 })).then(function (res) {
            return res.ok && res.body.logs && res.body.logs.length ? res.body.logs[0] : null;
          });
        };
        var loop = function () {
          if (lo >= hi) return probe(lo);
          var mid = Math.floor((lo + hi) / 2);
          return probe(mid).then(function (line) {
            if (!line || line.line_number > n) { hi = mid; if (line) found = line; return loop(); }
            if (line.line_number < n) { lo = line.id; return loop(); }
            return line;
          });
        };
        return loop().then(function (line) {
          line = line || found;
          if (!line) { self.message = "Line " + n + " was not found."; return; }
          return self.loadAround(line, true).then(function (rec) {
            if (!rec) return;
            self.message = line.line_number === n ? "" : "Line " + n + " is not shown at this level; nearest line shown.";
          });
        }).catch(function () {
          self.message = "Could not load line " + n + ".";
        }).then(function () {
          self.locating = false;
          if (self.message && self.message.indexOf("Finding") === 0) self.message = "";
        });
      },

      /** Highlight `line` and scroll it into view: `rec`, its record when it is loaded, or
       * else the lines around it, loaded first (loadAround). Resolves to its record. */
      showLineAt: function (line, rec) {
        if (!rec) return this.loadAround(line);
        view.highlight(rec);
        return this.reveal(rec);
      },

      /** Show the lines around `line` (200 before, 800 after) instead of the window, `line`
       * highlighted in the middle of the view; resolves to its record once it is there (null
       * if it could not be loaded). Following stops unless they reach the newest line.
       * `locating` holds until the line is in view, not only until the lines are in: the new
       * window moves the scroller by itself (a shorter one leaves it at its bottom) and the
       * scroll to the line waits for $nextTick, so a scroll event in between looked like the
       * reader reaching the bottom of a detached window, and onScroll jumped to the latest
       * lines, dropping the line just shown (seen under load in test_search_pages). */
      loadAround: function (line, keepLocating) {
        var self = this;
        this.locating = true;
        return Promise.all([
          apiFetch("/api/logs?" + self.pollQuery({ before: line.id + 1, limit: 200 })),
          apiFetch("/api/logs?" + self.pollQuery({ after: line.id, limit: 800 }))
        ]).then(function (both) {
          if (!both[0].ok || !both[1].ok) return null;
          var lines = (both[0].body.logs || []).concat(both[1].body.logs || []);
          self.detached = !!(both[1].body.meta && both[1].body.meta.has_more);
          self.newerCount = 0;
          view.reset(lines);
          self.hasOlder = !!(both[0].body.meta && both[0].body.meta.has_more);
          self.lineCount = view.length;
          self.rematch();
          var rec = S.findRecord(view, line.id);
          if (!rec) return null;
          view.highlight(rec);
          return self.reveal(rec);
        }).then(function (rec) {
          if (!keepLocating) self.locating = false;
          return rec;
        }, function (err) {
          if (!keepLocating) self.locating = false;
          throw err;
        });
      },

      // job actions
      cancel: function () {
        var self = this;
        this.busy = true;
        this.message = "";
        return apiFetch("/api/jobs/" + encodeURIComponent(this.jobId) + "/cancel", { method: "POST", json: {} })
          .then(function (res) {
            self.busy = false;
            if (res.ok) { self.mergeJob(res.body); self.message = "Cancel requested."; }
            else self.message = (res.body && res.body.error) || ("Cancel failed (" + res.status + ")");
          }, function () { self.busy = false; self.message = "Cancel failed: the server cannot be reached."; });
      },

      rerun: function () {
        var self = this;
        this.busy = true;
        this.message = "";
        return apiFetch("/api/jobs/" + encodeURIComponent(this.jobId) + "/rerun", { method: "POST", json: {} })
          .then(function (res) {
            self.busy = false;
            if (res.ok && res.body && res.body.id) root.location.assign("/jobs/" + encodeURIComponent(res.body.id));
            else self.message = (res.body && res.body.error) || ("Rerun failed (" + res.status + ")");
          }, function () { self.busy = false; self.message = "Rerun failed: the server cannot be reached."; });
      }
    });
    data.job = options.job || null;
    data.lastSeenId = function () { return stream ? stream.lastId : null; };
    JV.withJobVisuals(data, function () { return view; });
    // a value of a line's fields clicked, or a filter chip removed: the log again, filtered
    A.withAttrFilters(data, { prefix: "", changed: function () {
      this.connect();
      if (this.query && String(this.query).trim()) this.countMatches();
    } });
    return S.withSearch(data, function () { return view; });
  }

  return { jobLogPage: jobLogPage };
});
