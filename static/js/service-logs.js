/*
 * The service-logs panel on every page (Alpine component `sseServiceLogs`). Its attribute
 * filters are kept in the address as ?svc.attr.KEY=VALUE (apart from the page's own).
 * `QuaeroServiceLogs`; needs log-stream.js, log-http.js, log-view.js and log-attrs.js.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroLogs || require("./log-stream.js"), root.QuaeroHttp || require("./log-http.js"), root.QuaeroView || require("./log-view.js"), root.QuaeroVolume || require("./log-volume.js"),
    root.QuaeroAttrs || require("./log-attrs.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroServiceLogs = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, Q, H, V, Vol, A) {
  "use strict";

  var LEVELS = Q.LEVELS;
  var LogView = V.LogView;
  var mixin = V.withConnectionState;
  var rememberPrefs = V.rememberPrefs;
  var atBottom = V.atBottom;
  var scrollToBottom = V.scrollToBottom;
  var toLogin = H.toLogin;

  // --- Alpine: the service-logs panel --------------------------------------------------

  /**
   * `options.folded`: the panel starts folded to its bar (the job page, whose log wants the
   * height); narrow screens always start so. Whether the reader opened or folded it is
   * remembered apart for those pages and the others.
   */
  function sseServiceLogs(options) {
    options = options || {};
    var view = null;
    var stream = null;
    var data = mixin({
      level: options.level || "info",
      autoScroll: true,
      paused: false,
      open: !(options.folded || (root.matchMedia && root.matchMedia("(max-width: 720px)").matches)),
      lineCount: 0,
      newLines: 0,
      showTimestamps: true,
      levels: LEVELS,
      grep: "",            // show only the lines that contain this (the stream's `q`)

      init: function () {
        var self = this;
        var box = this.$refs.lines;
        rememberPrefs(this, "serviceLogs", ["level", "showTimestamps"]);
        rememberPrefs(this, options.folded ? "serviceLogsFolded" : "serviceLogsOpen", ["open"]);
        if (LEVELS.indexOf(this.level) < 0) this.level = "info";
        this.readFilters();
        view = new LogView({ root: box, maxLines: options.maxLines || 1000, showStep: false,
          onFilter: function (field) { self.filterBy(field); }, traceUrl: this.traceUrl });
        box.addEventListener("scroll", function () { self.onScroll(); }, { passive: true });
        this.connect();
      },
      destroy: function () {
        if (stream) stream.close();
      },
      connect: function () {
        var self = this;
        if (stream) stream.close();
        view.clear();
        this.lineCount = 0;
        this.newLines = 0;
        var q = this.grep && this.grep.trim() ? this.grep : "";
        view.setQuery(q);
        stream = Q.createServiceStream({
          level: this.level, q: q, limit: 200, maxLines: view.o.maxLines,
          attrs: this.filters.attrs, traceId: this.filters.traceId,
          onLines: function (lines) { self.add(lines); },
          onState: function (state) { self.state = state; },
          onAuthError: toLogin
        });
        stream.start();
      },
      add: function (lines) {
        if (!lines.length) return;
        view.append(lines);
        this.lineCount = view.length;
        if (this.autoScroll && !this.paused) scrollToBottom(this.$refs.lines);
        else this.newLines += lines.length;
      },
      onScroll: function () {
        var bottom = atBottom(this.$refs.lines);
        this.paused = !bottom;
        if (bottom) this.newLines = 0;
      },
      setLevel: function () { this.connect(); },
      setGrep: function () { this.connect(); },
      clear: function () {
        view.clear();
        if (stream) stream.buffer.clear();
        this.lineCount = 0;
        this.newLines = 0;
        this.paused = false;
      },
      toggleAutoScroll: function () {
        if (this.autoScroll) this.jumpToBottom();
      },
      jumpToBottom: function () {
        this.paused = false;
        this.newLines = 0;
        scrollToBottom(this.$refs.lines);
      },
      reconnect: function () { if (stream) stream.reconnectNow(); },

      // log volume (log-volume.js): the histogram's query, and the lines of a picked range
      filterQuery: function () {
        return Q.buildQueryParams({ scope: "service", level: this.level,
          q: this.grep && this.grep.trim() ? this.grep : "",
          attrs: this.filters.attrs, traceId: this.filters.traceId });
      },
      volumeQuery: function () {
        return this.filterQuery() + "&buckets=60";
      },
      showFrom: function (range) {
        var self = this;
        var base = this.filterQuery();
        var probe = function (after) {
          return H.apiFetch("/api/logs?" + base + "&limit=1&after=" + after).then(function (res) {
            return res.ok && res.body.logs && res.body.logs.length ? res.body.logs[0] : null;
          });
        };
        var hi = (stream && stream.lastId) || view.lastId || Number.MAX_SAFE_INTEGER;
        return Vol.bisectTime(probe, range.start, hi + 1).then(function (line) {
          if (!line) return;
          return H.apiFetch("/api/logs?" + base + "&limit=200&after=" + (line.id - 1)).then(function (res) {
            if (!res.ok) return;
            self.paused = true;
            view.reset(res.body.logs || []);
            self.lineCount = view.length;
            self.$refs.lines.scrollTop = 0;
          });
        });
      }
    });
    return A.withAttrFilters(data, { prefix: "svc.", changed: function () { this.connect(); } });
  }

  return { sseServiceLogs: sseServiceLogs };
});
