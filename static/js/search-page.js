/*
 * The search page (/search): every stored line that contains a text, across every job
 * and the service log, newest first, with "load more" (`GET /api/search`), or every line
 * with an attribute value or of a trace (then the text is optional). The form's state is
 * in the address (?q=&level=&job_id=&attr.KEY=VALUE&trace_id=), so a search can be linked
 * and reloaded. A result with attributes unfolds them; a value filters by it.
 * `QuaeroSearchPage`; needs log-format.js, log-http.js and log-attrs.js. Pure:
 * searchQuery, splitMatches, lineLink, parseFilterText.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroFormat || require("./log-format.js"), root.QuaeroHttp || require("./log-http.js"),
    root.QuaeroAttrs || require("./log-attrs.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroSearchPage = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, F, H, A) {
  "use strict";

  var PAGE = 50;

  /** The query string of `/api/search` (and of the page's address) from
   * `{q, level, jobId, filters, before, limit}` (`filters`: log-attrs.js's); empty values
   * are left out, but for `q` when there is no attribute filter (it is required then). */
  function searchQuery(s) {
    var p = new URLSearchParams();
    var filters = s.filters || A.noFilters();
    var filtered = filters.attrs.length > 0 || !!filters.traceId;
    if (s.q || !filtered) p.append("q", s.q || "");
    if (s.level && s.level !== "debug") p.append("level", s.level);
    if (s.jobId) p.append("job_id", s.jobId);
    if (filtered) {
      new URLSearchParams(A.queryWithFilters("", filters, "")).forEach(function (v, k) { p.append(k, v); });
    }
    if (s.before !== undefined && s.before !== null) p.append("before", String(s.before));
    if (s.limit) p.append("limit", String(s.limit));
    return p.toString();
  }

  /** `text` cut into `{text, match}` pieces where `q` occurs (any case), for x-for/x-text. */
  function splitMatches(text, q) {
    text = String(text);
    var ranges = F.findMatches(text, q);
    var parts = [];
    var pos = 0;
    ranges.forEach(function (r) {
      if (r[0] > pos) parts.push({ text: text.slice(pos, r[0]), match: false });
      parts.push({ text: text.slice(r[0], r[1]), match: true });
      pos = r[1];
    });
    if (pos < text.length || !parts.length) parts.push({ text: text.slice(pos), match: false });
    return parts;
  }

  /** Where a result leads: its job's page at its line, or the service log. */
  function lineLink(line) {
    if (!line.job_id) return "/#svc-lines";
    return "/jobs/" + encodeURIComponent(line.job_id) + "#L" + line.line_number;
  }

  /** What the filter box holds as a filter: `key=value` (the first `=` splits; a
   * `trace_id=` of 32 hex digits is the trace), else null. */
  function parseFilterText(text) {
    text = text === undefined || text === null ? "" : String(text);
    var at = text.indexOf("=");
    if (at <= 0) return null;
    var key = text.slice(0, at).trim();
    var value = text.slice(at + 1);
    if (!key || key.length > 128) return null;
    if (key === "trace_id" && /^\s*[0-9a-fA-F]{32}\s*$/.test(value)) {
      return { kind: "trace", key: key, value: value.trim().toLowerCase() };
    }
    return { kind: "attr", key: key, value: value };
  }

  function quaeroSearch() {
    var seq = 0;
    var data = {
      q: "",
      level: "debug",
      jobId: "",
      jobChoices: [],
      results: [],
      jobs: {},
      nextBefore: null,
      searched: null,      // what the results shown are of: {q, filters (text), query}
      loading: false,
      error: "",
      openId: null,        // the result whose fields are unfolded
      filterText: "",      // the "add a filter" box
      filterError: "",

      init: function () {
        var params = new URLSearchParams(root.location.search);
        // what was typed before the page's scripts ran is kept
        this.q = params.get("q") || (this.$refs.q && this.$refs.q.value) || "";
        this.level = params.get("level") || "debug";
        this.jobId = params.get("job_id") || "";
        this.readFilters();
        this.loadJobs();
        if (this.q || this.hasFilters()) this.run(false);
      },

      loadJobs: function () {
        var self = this;
        return H.apiFetch("/api/jobs?limit=100").then(function (res) {
          if (!res.ok) return;
          var list = res.body.jobs.map(function (j) { return { id: j.id, label: j.name + " · " + j.id.slice(0, 8) + " · " + j.status }; });
          if (self.jobId && !list.some(function (j) { return j.id === self.jobId; })) {
            list.unshift({ id: self.jobId, label: self.jobId });
          }
          self.jobChoices = list;
        }, function () {});
      },

      submit: function () {
        if (!this.q && !this.hasFilters()) return;
        var here = root.location.pathname + "?" + searchQuery({ q: this.q, level: this.level, jobId: this.jobId,
          filters: this.filters });
        root.history.replaceState(null, "", here);
        return this.run(false);
      },

      /** The filter box: `key=value` becomes a filter (and a chip). */
      addFilterText: function () {
        var field = parseFilterText(this.filterText);
        if (!field) { this.filterError = "Write a filter as key=value, e.g. user.id=42"; return; }
        this.filterError = "";
        this.filterText = "";
        this.filterBy(field);
      },

      /** The filters changed: the address says so (withAttrFilters) and the search runs again. */
      filtersChanged: function () {
        this.openId = null;
        if (this.q || this.hasFilters()) return this.run(false);
        seq++;
        this.results = [];
        this.searched = null;
        this.volumeOf = "";
      },

      toggleFields: function (line) { this.openId = this.openId === line.id ? null : line.id; },
      hasFields: A.hasFields,
      fields: A.fieldsOf,
      traceHref: function (field) { return field.kind === "trace" ? A.traceLink(this.traceUrl, field.value) : null; },
      fieldCount: function (line) { return A.fieldsOf(line).length; },

      /** What the results are: "3 lines contain “x” with user.id=42, newest first". */
      summary: function () {
        var s = this.searched;
        if (!s) return "";
        var what = s.q ? "contain “" + s.q + "”" : "match";
        var with_ = s.filters ? " with " + s.filters : "";
        if (!this.results.length) return "No line " + (s.q ? "contains “" + s.q + "”" : "matches") + with_ + ".";
        var n = this.results.length + (this.nextBefore ? "+" : "");
        return n + (this.results.length === 1 && !this.nextBefore ? " line " + (s.q ? "contains “" + s.q + "”" : "matches")
          : " lines " + what) + with_ + ", newest first";
      },

      /** The first page (more=false) or the next page back (more=true). */
      run: function (more) {
        var self = this;
        var mine = ++seq;
        var q = this.q;
        var filters = this.filters;
        if (!q && !this.hasFilters()) return Promise.resolve();
        this.loading = true;
        this.error = "";
        var url = "/api/search?" + searchQuery({ q: q, level: this.level, jobId: this.jobId, filters: filters,
          before: more ? this.nextBefore : null, limit: PAGE });
        return H.apiFetch(url).then(function (res) {
          if (mine !== seq) return;
          self.loading = false;
          if (!res.ok) { self.error = (res.body && res.body.error) || "Search failed (" + res.status + ")."; return; }
          var body = res.body;
          self.results = more ? self.results.concat(body.results) : body.results;
          self.jobs = Object.assign(more ? self.jobs : {}, body.jobs || {});
          self.nextBefore = body.next_before;
          self.searched = { q: q, filters: A.chipsOf(filters).map(function (c) { return c.label; }).join(", "),
            query: { q: q, level: self.level, jobId: self.jobId, filters: filters } };
          if (!more) self.volumeOf = "scope=all&" + searchQuery(self.searched.query) + "&buckets=60";
        }, function () {
          if (mine !== seq) return;
          self.loading = false;
          self.error = "The server cannot be reached.";
        });
      },

      more: function () { return this.run(true); },

      // log volume (log-volume.js): the matches over time; a picked range lists the
      // matches from its end back (the newest match before it found by bisection)
      volumeOf: "",
      volumeQuery: function () { return this.volumeOf || null; },
      showFrom: function (range) {
        var self = this;
        var base = "/api/search?" + searchQuery(Object.assign({}, this.searched.query, { limit: 1 }));
        var lo = 0, best = null;
        var hi = (this.results.length ? this.results[0].id : Number.MAX_SAFE_INTEGER - 1) + 1;
        var step = function () {
          if (lo >= hi) return Promise.resolve(best);
          var mid = Math.floor((lo + hi) / 2);
          return H.apiFetch(base + "&before=" + mid).then(function (res) {
            var line = res.ok && res.body.results && res.body.results[0];
            if (!line) lo = mid + 1;
            else if (Date.parse(line.timestamp) < range.end) { best = line; lo = mid + 1; } else hi = line.id;
            return step();
          });
        };
        return step().then(function (line) {
          if (!line) return;
          self.results = [];
          self.nextBefore = line.id + 1;
          return self.run(true);
        });
      },
      parts: function (line) { return splitMatches(F.stripAnsi(line.message), this.searched ? this.searched.q : ""); },
      link: lineLink,
      where: function (line) {
        if (!line.job_id) return "service log";
        var job = this.jobs[line.job_id];
        return job ? job.name : line.job_id;
      },
      jobStatus: function (line) {
        var job = line.job_id && this.jobs[line.job_id];
        return job ? job.status : "";
      },
      when: F.formatDateTime
    };
    return A.withAttrFilters(data, { prefix: "", changed: function () { this.filtersChanged(); } });
  }

  return { quaeroSearch: quaeroSearch, searchQuery: searchQuery, splitMatches: splitMatches,
    lineLink: lineLink, parseFilterText: parseFilterText, PAGE: PAGE };
});
