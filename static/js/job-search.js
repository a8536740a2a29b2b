/*
 * The job page's search over the job's whole log, not only the lines the page holds
 * (`QuaeroJobSearch`): the server counts the matching lines of the whole job, ↑/↓ ask it
 * for the previous or next match (by id) and the page loads the lines around a match it
 * does not hold; "only matching lines" reopens the stream with `q` (a live grep).
 * Mixed into jobLogPage (job-page.js); needs log-http.js. Pure: matchLabel.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroHttp || require("./log-http.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroJobSearch = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, H) {
  "use strict";

  var apiFetch = H.apiFetch;
  var RECOUNT_MS = 2000;   // while lines stream in, the whole-job count is refreshed this often

  /** What the search box says: "", "Searching…", "No lines match", "3 matching lines",
   * "2 of 3 matching lines" ("10000+" when the server stopped counting). */
  function matchLabel(s) {
    if (!s.query || !String(s.query).trim()) return "";
    if (s.error) return s.error;
    if (s.total === null || s.total === undefined) return "Searching…";
    if (!s.total) return "No lines match";
    var total = s.total + (s.capped ? "+" : "");
    var noun = s.total === 1 && !s.capped ? " matching line" : " matching lines";
    if (s.index === null || s.index === undefined || s.index < 0) return total + noun;
    return (s.index + 1) + " of " + total + noun;
  }

  /** The text searched for, or "" when the box holds only spaces. */
  function searchText(query) {
    return query && String(query).trim() ? String(query) : "";
  }

  /**
   * Add the search to a job page component `data`. `viewOf()` gives its LogView. The
   * component provides `pollQuery(extra)`, `reveal(rec)` (scroll a loaded line into view),
   * `showLineAt(line, rec)` (highlight and reveal a line, loading the lines around it when
   * `rec` is null) and `connect()`.
   */
  function withSearch(data, viewOf) {
    var seq = 0;             // a newer search makes older answers stale
    var recountTimer = null;
    var stepping = null;

    Object.assign(data, {
      query: "",
      matchTotal: null,
      matchCapped: false,
      matchIndex: -1,
      matchId: null,
      searchError: "",
      onlyMatching: false,

      /** `q` of the stream and of the pages loaded: only in "only matching lines" mode. */
      streamQ: function () {
        return this.onlyMatching ? searchText(this.query) : "";
      },

      search: function () {
        var q = searchText(this.query);
        seq++;
        this.matchTotal = null;
        this.matchCapped = false;
        this.matchIndex = -1;
        this.matchId = null;
        this.searchError = "";
        viewOf().setQuery(q);
        viewOf().highlight(null);
        if (this.onlyMatching) this.connect();
        if (!q) return Promise.resolve();
        var self = this;
        var mine = seq;
        // as a browser's find does: go to the first match as soon as there is one
        return this.countMatches().then(function () {
          if (mine === seq && self.matchTotal) return self.stepMatch(1);
        });
      },

      /** The number of lines that match in the whole job (at the page's level). */
      countMatches: function () {
        var self = this;
        var mine = seq;
        var q = searchText(this.query);
        return apiFetch("/api/logs?" + this.pollQuery({ q: q, limit: 0 })).then(function (res) {
          if (mine !== seq) return;
          if (!res.ok) { self.searchError = (res.body && res.body.error) || "Search failed (" + res.status + ")"; return; }
          var meta = res.body.meta || {};
          self.matchTotal = meta.total_count || 0;
          self.matchCapped = !!meta.total_count_capped;
        }, function () { if (mine === seq) self.searchError = "Search failed: the server cannot be reached."; });
      },

      /** New lines arrived: the count may have grown (asked again at most every RECOUNT_MS). */
      linesArrived: function () {
        var self = this;
        if (!searchText(this.query) || this.matchTotal === null || recountTimer) return;
        recountTimer = setTimeout(function () { recountTimer = null; self.countMatches(); }, RECOUNT_MS);
      },

      nextMatch: function () { return this.stepMatch(1); },
      prevMatch: function () { return this.stepMatch(-1); },

      /** The next (+1, newer) or previous (-1, older) matching line of the whole job;
       * past the last it wraps to the first, and back. */
      stepMatch: function (direction) {
        var self = this;
        var q = searchText(this.query);
        if (stepping) return stepping.then(function () { return self.stepMatch(direction); });
        if (!q || !this.matchTotal) return Promise.resolve();
        var mine = seq;
        var cur = this.matchId;
        var total = this.matchTotal;
        var fetchOne = function (where) {
          return apiFetch("/api/logs?" + self.pollQuery(Object.assign({ q: q, limit: 1 }, where)))
            .then(function (res) {
              var logs = res.ok && res.body.logs ? res.body.logs : [];
              return logs.length ? logs[direction > 0 ? 0 : logs.length - 1] : null;
            });
        };
        var first = function () { return fetchOne({ after: 0 }); };
        var last = function () { return fetchOne({}); };
        var index;
        var found;
        if (cur === null) {
          index = direction > 0 ? 0 : total - 1;
          found = direction > 0 ? first() : last();
        } else {
          found = fetchOne(direction > 0 ? { after: cur } : { before: cur }).then(function (line) {
            if (line) { index = self.matchIndex + direction; return line; }
            index = direction > 0 ? 0 : total - 1;
            return direction > 0 ? first() : last();
          });
        }
        stepping = found.then(function (line) {
          if (mine !== seq || !line) return;
          self.matchId = line.id;
          self.matchIndex = Math.max(0, index);
          return self.showMatch(line);
        }).catch(function () {
          self.searchError = "Search failed: the server cannot be reached.";
        }).then(function () { stepping = null; });
        return stepping;
      },

      /** Scroll to a matching line, loading the lines around it when it is not loaded
       * (loadAround highlights and reveals it: the page must not follow until it is shown). */
      showMatch: function (line) {
        return this.showLineAt(line, findRecord(viewOf(), line.id));
      },

      toggleOnlyMatching: function () {
        this.connect();
      }
    });
    Object.defineProperty(data, "matchLabel", {
      enumerable: true, configurable: true,
      get: function () {
        return matchLabel({ query: this.query, error: this.searchError, total: this.matchTotal,
          capped: this.matchCapped, index: this.matchIndex });
      }
    });
    return data;
  }

  function findRecord(view, id) {
    for (var i = view.records.length - 1; i >= 0; i--) {
      if (view.records[i].line.id === id) return view.records[i];
    }
    return null;
  }

  return { withSearch: withSearch, matchLabel: matchLabel, searchText: searchText, findRecord: findRecord };
});
