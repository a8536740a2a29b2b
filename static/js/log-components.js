/*
 * Quaero page components (plain JS + Alpine.js, no build step). This file is the last of
 * the page scripts; the pieces are loaded before it, each a small file of its own:
 *
 *   log-format.js    pure: ANSI colours, level words, search ranges, durations, times
 *   log-query.js     pure: query strings, reconnect backoff, the bounded line buffer
 *   log-stream.js    QuaeroLogs: one log followed over an EventSource, polling as fallback
 *   log-http.js      apiFetch (cookie, CSRF header), the way to the login page
 *   log-view.js      LogView: lines in the DOM, bounded, searchable; shared component bits
 *   queue-streams.js QueueSSEManager: many jobs over one EventSource
 *   service-logs.js  sseServiceLogs: the service-logs panel
 *   job-search.js    the job page's search over the whole log, "only matching lines"
 *   job-page.js      jobLogPage: the job page
 *   pages.js         quaeroHome, quaeroQueue (and its rows, queueJobLog), quaeroShell
 *   search-page.js   quaeroSearch: the search page (/search)
 *   log-volume.js    logVolume: the log-volume histogram (SVG), picking a time range
 *   log-groups.js    ::group:: / ::endgroup:: lines folded into sections (job page)
 *   page-keys.js     quaeroKeys (keys, `?` list, light/dark), panelSizer (service panel)
 *
 * Here: the globals the pages and other clients use (QueueSSEManager, sseJobLogViewer,
 * sseServiceLogs, ...) and their registration with Alpine. In node, the DOM-free parts
 * (QueueSSEManager) are usable through require().
 */
(function (root, factory) {
  "use strict";
  var load = function (name, file) { return root[name] || require("./" + file); };
  var api = factory(load("QuaeroView", "log-view.js"), load("QuaeroQueueStreams", "queue-streams.js"),
    load("QuaeroServiceLogs", "service-logs.js"), load("QuaeroJobPage", "job-page.js"),
    load("QuaeroPages", "pages.js"), load("QuaeroHttp", "log-http.js"), load("QuaeroLogs", "log-stream.js"),
    load("QuaeroSearchPage", "search-page.js"), load("QuaeroVolume", "log-volume.js"), load("QuaeroKeys", "page-keys.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  if (root.document) {
    Object.keys(api).forEach(function (name) { root[name] = api[name]; });
    root.document.addEventListener("alpine:init", function () {
      ["sseServiceLogs", "sseJobLogViewer", "quaeroHome", "quaeroQueue", "quaeroShell", "quaeroSearch",
        "logVolume", "quaeroKeys", "panelSizer"].forEach(function (name) {
        root.Alpine.data(name, api[name]);
      });
    });
  }
})(typeof window !== "undefined" ? window : globalThis, function (View, Streams, Service, JobPage, Pages, Http, Q, Search, Volume, Keys) {
  "use strict";

  /**
   * One job's log: `options.mode` "full" is the job page (jobLogPage), "compact" (or a
   * `manager`) a row on /queue fed by the page's QueueSSEManager (queueJobLog).
   */
  function sseJobLogViewer(jobId, options) {
    options = options || {};
    var compact = options.mode === "compact" || !!options.manager;
    return compact ? Pages.queueJobLog(jobId, options) : JobPage.jobLogPage(jobId, options);
  }

  return {
    LogView: View.LogView,
    QueueSSEManager: Streams.QueueSSEManager,
    sseServiceLogs: Service.sseServiceLogs,
    sseJobLogViewer: sseJobLogViewer,
    quaeroHome: Pages.quaeroHome,
    quaeroQueue: Pages.quaeroQueue,
    quaeroShell: Pages.quaeroShell,
    quaeroSearch: Search.quaeroSearch,
    logVolume: Volume.logVolume,
    quaeroKeys: Keys.quaeroKeys,
    panelSizer: Keys.panelSizer,
    QuaeroUI: {
      renderMessage: View.renderMessage, formatTime: Q.formatTime, timeAgo: Q.timeAgo,
      durationOf: Q.durationOf, apiFetch: Http.apiFetch, STATE_LABELS: View.STATE_LABELS
    }
  };
});
