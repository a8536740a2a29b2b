/*
 * The search page (/search): every stored line that contains a text, across every job
 * and the service log, newest first, with "load more" (`GET /api/search`). The form's
 * state is in the address (?q=&level=&job_id=), so a search can be linked and reloaded.
 * `QuaeroSearchPage`; needs log-format.js and log-http.js. Pure: searchQuery,
 * splitMatches, lineLink.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroFormat || require("./log-format.js"), root.QuaeroHttp || require("./log-http.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroSearchPage = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, F, H) {
  "use strict";

  var PAGE = 50;

  /** The query string of `/api/search` (and of the page's address) from
   * `{q, level, jobId, before, limit}`; empty values are left out. */
  function searchQuery(s) {
    var p = new URLSearchParams();
    p.append("q", s.q || "");
    if (s.level && s.level !== "debug") p.append("level", s.level);
    if (s.jobId) p.append("job_id", s.jobId);
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

  function quaeroSearch() {
    var seq = 0;
    return {
      q: "",
      level: "debug",
      jobId: "",
      jobChoices: [],
      results: [],
      jobs: {},
      nextBefore: null,
      searched: "",        // the text of the results shown
      loading: false,
      error: "",

      init: function () {
        var params = new URLSearchParams(root.location.search);
        // what was typed before the page's scripts ran is kept
        this.q = params.get("q") || (this.$refs.q && this.$refs.q.value) || "";
        this.level = params.get("level") || "debug";
        this.jobId = params.get("job_id") || "";
        this.loadJobs();
        if (this.q) this.run(false);
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
        if (!this.q) return;
        var here = root.location.pathname + "?" + searchQuery({ q: this.q, level: this.level, jobId: this.jobId });
        root.history.replaceState(null, "", here);
        return this.run(false);
      },

      /** The first page (more=false) or the next page back (more=true). */
      run: function (more) {
        var self = this;
        var mine = ++seq;
        var q = this.q;
        this.loading = true;
        this.error = "";
        var url = "/api/search?" + searchQuery({ q: q, level: this.level, jobId: this.jobId,
          before: more ? this.nextBefore : null, limit: PAGE });
        return H.apiFetch(url).then(function (res) {
          if (mine !== seq) return;
          self.loading = false;
          if (!res.ok) { self.error = (res.body && res.body.error) || "Search failed (" + res.status + ")."; return; }
          var body = res.body;
          self.results = more ? self.results.concat(body.results) : body.results;
          self.jobs = Object.assign(more ? self.jobs : {}, body.jobs || {});
          self.nextBefore = body.next_before;
          self.searched = q;
          if (!more) self.volumeOf = "scope=all&" + searchQuery({ q: q, level: self.level, jobId: self.jobId }) + "&buckets=60";
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
        var base = "/api/search?" + searchQuery({ q: this.searched, level: this.level, jobId: this.jobId, limit: 1 });
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
      parts: function (line) { return splitMatches(F.stripAnsi(line.message), this.searched); },
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
  }

  return { quaeroSearch: quaeroSearch, searchQuery: searchQuery, splitMatches: splitMatches,
    lineLink: lineLink, PAGE: PAGE };
});
