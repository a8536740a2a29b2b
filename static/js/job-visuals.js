/*
 * The job page's pictures and keys: the step timeline (each step a bar on the job's time
 * axis, live while it runs; a click jumps to the step's first line), the log volume's
 * query and "the lines from then" for a picked time range, and what the keys do.
 * `QuaeroJobVisuals`; needs log-format.js, log-http.js, log-volume.js. Pure: timelineBars.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroFormat || require("./log-format.js"), root.QuaeroHttp || require("./log-http.js"),
    root.QuaeroVolume || require("./log-volume.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroJobVisuals = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, F, H, Vol) {
  "use strict";

  function ms(iso) { return iso ? Date.parse(iso) : NaN; }

  /**
   * The timeline of `job` at `now` (ms): `{bars: [{name, status, left, width, label}],
   * start, end}`, left and width in percent of the axis from the first step's start to
   * the last end (or now, while a step runs). A step that has not started has no bar
   * (width 0). Pure.
   */
  function timelineBars(job, now) {
    var steps = (job && job.steps) || [];
    var starts = steps.map(function (s) { return ms(s.started_at); }).filter(isFinite);
    var t0 = starts.length ? Math.min.apply(null, starts) : ms(job && job.started_at);
    var ends = steps.map(function (s) {
      return s.started_at ? (s.finished_at ? ms(s.finished_at) : now) : NaN;
    }).filter(isFinite);
    var t1 = ends.length ? Math.max.apply(null, ends) : t0;
    var span = Math.max(1, t1 - t0);
    var bars = steps.map(function (s) {
      var a = ms(s.started_at);
      if (!isFinite(a) || !isFinite(t0)) return { name: s.name, status: s.status, left: 0, width: 0, label: s.status };
      var b = s.finished_at ? ms(s.finished_at) : now;
      var left = ((a - t0) / span) * 100;
      var width = Math.max(0.5, ((b - a) / span) * 100);
      return { name: s.name, status: s.status, left: Math.min(left, 99.5), width: Math.min(width, 100 - Math.min(left, 99.5)),
        label: F.durationOf(s, now) };
    });
    return { bars: bars, start: t0, end: t1 };
  }

  /** Add the timeline, volume and keys to the job page's data; `viewOf()` is its LogView. */
  function withJobVisuals(data, viewOf) {
    return Object.assign(data, {
      wrap: true,

      timeline: function () { return timelineBars(this.job, this.now); },

      /** The first line of a step: its section opens, the line is shown and marked. */
      jumpToStep: function (name) {
        var self = this;
        if (this.collapsed[name]) this.collapsed[name] = false;
        var q = this.pollQuery({ after: 0, limit: 1 }) + "&step=" + encodeURIComponent(name);
        return H.apiFetch("/api/logs?" + q).then(function (res) {
          var line = res.ok && res.body.logs && res.body.logs[0];
          if (!line) { self.message = "Step " + name + " has no lines at this level yet."; return; }
          self.message = "";
          return self.showLine(line);
        });
      },

      showLine: function (line) {
        return this.showLineAt(line, viewOf().findLine(line.line_number)).then(function (r) {
          if (r && r.el && r.el.focus) { r.el.tabIndex = -1; r.el.focus({ preventScroll: true }); }
        });
      },

      volumeQuery: function () {
        return this.pollQuery({}) + "&buckets=" + (root.innerWidth < 600 ? 40 : 80);
      },
      volumeLive: function () { return !!this.job && this.job.status === "running"; },

      /** A picked time range: the lines from its start, around the first of them. */
      showFrom: function (range) {
        var self = this;
        var view = viewOf();
        var probe = function (after) {
          return H.apiFetch("/api/logs?" + self.pollQuery({ after: after, limit: 1 })).then(function (res) {
            return res.ok && res.body.logs && res.body.logs.length ? res.body.logs[0] : null;
          });
        };
        // before the first lines arrive nothing bounds the ids: search them all
        var hi = Math.max(view.lastId || 0, this.lastSeenId() || 0) + 1;
        if (hi <= 1) hi = Number.MAX_SAFE_INTEGER;
        this.message = "Finding the lines of that time…";
        return Vol.bisectTime(probe, range.start, hi).then(function (line) {
          self.message = line ? "" : "No line from that time at this level.";
          if (line) return self.showLine(line);
        }, function () { self.message = "Could not load the lines of that time."; });
      },

      onKey: function (action) {
        var box = this.$refs.scroller;
        if (action === "next") this.nextMatch();
        else if (action === "prev") this.prevMatch();
        else if (action === "top") { this.moves++; this.paused = true; box.scrollTop = 0; }
        else if (action === "bottom") { this.moves++; this.autoScroll = true; this.jumpToLatest(); }
        else if (action === "follow") { this.autoScroll = !this.autoScroll; this.toggleAutoScroll(); }
      }
    });
  }

  return { timelineBars: timelineBars, withJobVisuals: withJobVisuals };
});
