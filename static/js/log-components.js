/*
 * Quaero page components (plain JS + Alpine.js, no build step).
 *
 * - LogView: renders log lines into a container as DOM nodes built with textContent
 *   (messages are untrusted: never HTML), ANSI colours as classed spans, line numbers
 *   as text with permalinks, search highlights; holds a bounded window of lines.
 * - QueueSSEManager: follows any number of jobs (up to 50) over ONE EventSource.
 * - Alpine components: sseServiceLogs, sseJobLogViewer(jobId, options), plus the
 *   page components quaeroHome and quaeroQueue.
 *
 * Needs log-stream.js (QuaeroLogs) first. In node, only the DOM-free parts are usable.
 */
(function (root, factory) {
  "use strict";
  var logs = root && root.QuaeroLogs;
  if (!logs && typeof require === "function") logs = require("./log-stream.js");
  var api = factory(root, logs);
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  if (root && typeof root.document !== "undefined") {
    Object.keys(api).forEach(function (name) { root[name] = api[name]; });
    root.document.addEventListener("alpine:init", function () {
      var Alpine = root.Alpine;
      Alpine.data("sseServiceLogs", api.sseServiceLogs);
      Alpine.data("sseJobLogViewer", api.sseJobLogViewer);
      Alpine.data("quaeroHome", api.quaeroHome);
      Alpine.data("quaeroQueue", api.quaeroQueue);
      Alpine.data("quaeroShell", api.quaeroShell);
    });
  }
})(typeof window !== "undefined" ? window : (typeof globalThis !== "undefined" ? globalThis : this),
function (root, Q) {
  "use strict";

  var doc = root && root.document;
  var LEVELS = Q.LEVELS;

  // --- small helpers -------------------------------------------------------------------

  function pad(n, w) {
    var s = String(n);
    while (s.length < (w || 2)) s = "0" + s;
    return s;
  }

  function formatTime(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
      pad(d.getMilliseconds(), 3);
  }

  function formatDateTime(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function timeAgo(iso, now) {
    if (!iso) return "";
    var ms = (now || Date.now()) - new Date(iso).getTime();
    if (!isFinite(ms)) return "";
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  /** How long a job or step ran (or has been running). */
  function durationOf(item, now) {
    if (!item || !item.started_at) return "";
    var start = new Date(item.started_at).getTime();
    var end = item.finished_at ? new Date(item.finished_at).getTime() : (now || Date.now());
    return Q.formatDuration(Math.max(0, end - start));
  }

  function csrfToken() {
    var meta = doc && doc.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function toLogin() {
    if (!doc) return;
    var meta = doc.querySelector('meta[name="quaero-login"]');
    if (!meta) return;
    var here = root.location.pathname + root.location.search + root.location.hash;
    root.location.assign(meta.getAttribute("content") + "?next=" + encodeURIComponent(here));
  }

  /** fetch for the pages: same-origin cookie, JSON, the CSRF header on writes. */
  function apiFetch(url, init) {
    init = Object.assign({ method: "GET" }, init || {});
    var headers = { Accept: "application/json" };
    if (init.method !== "GET" && init.method !== "HEAD") {
      headers["X-CSRF-Token"] = csrfToken();
      if (init.json !== undefined) {
        headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(init.json);
      }
    }
    return root.fetch(url, {
      method: init.method, body: init.body, headers: headers,
      credentials: "same-origin", cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) toLogin();
      return response.json().catch(function () { return {}; }).then(function (body) {
        return { ok: response.ok, status: response.status, body: body };
      });
    });
  }

  /** Remembered view settings (not auto-scroll: that is on whenever a page opens). */
  function loadPrefs(key, target, names) {
    try {
      var saved = JSON.parse(root.localStorage.getItem("quaero." + key) || "{}");
      names.forEach(function (n) { if (saved[n] !== undefined) target[n] = saved[n]; });
    } catch (e) { /* storage disabled or corrupt: defaults */ }
  }

  function savePrefs(key, source, names) {
    try {
      var out = {};
      names.forEach(function (n) { out[n] = source[n]; });
      root.localStorage.setItem("quaero." + key, JSON.stringify(out));
    } catch (e) { /* storage disabled */ }
  }

  function rememberPrefs(component, key, names) {
    loadPrefs(key, component, names);
    names.forEach(function (n) {
      component.$watch(n, function () { savePrefs(key, component, names); });
    });
  }

  var STATE_LABELS = {
    idle: "disconnected", connecting: "connecting", connected: "connected",
    reconnecting: "reconnecting", polling: "polling", disconnected: "disconnected",
    ended: "disconnected", closed: "disconnected"
  };
  var STATE_TITLES = {
    idle: "Not connected",
    connecting: "Connecting to the live stream…",
    connected: "Connected: lines arrive live",
    reconnecting: "The stream dropped; reconnecting (nothing is lost)",
    polling: "The stream is unavailable; polling for new lines every few seconds",
    disconnected: "Disconnected: the server cannot be reached; retrying",
    ended: "Disconnected: the job has finished and its stream is closed",
    closed: "Disconnected"
  };

  // --- LogView -------------------------------------------------------------------------

  var HEX = /^#[0-9a-f]{6}$/i;

  function styleSpan(style) {
    var span = doc.createElement("span");
    var cls = [];
    var fg = style.fg, bg = style.bg;
    if (style.inverse) { var t = fg; fg = bg === undefined ? "bg" : bg; bg = t === undefined ? "fg" : t; }
    if (typeof fg === "number") cls.push("ansi-fg-" + fg);
    else if (fg === "bg") cls.push("ansi-fg-inverse");
    else if (typeof fg === "string" && HEX.test(fg)) span.style.color = fg;
    if (typeof bg === "number") cls.push("ansi-bg-" + bg);
    else if (bg === "fg") cls.push("ansi-bg-inverse");
    else if (typeof bg === "string" && HEX.test(bg)) span.style.backgroundColor = bg;
    ["bold", "dim", "italic", "underline", "strike"].forEach(function (k) {
      if (style[k]) cls.push("ansi-" + k);
    });
    span.className = cls.join(" ");
    return span;
  }

  function hasStyle(style) {
    for (var k in style) if (Object.prototype.hasOwnProperty.call(style, k)) return true;
    return false;
  }

  /**
   * Fill `el` with `message`: ANSI segments become spans, matches of the search become
   * <mark>; every piece of text goes in as a text node.
   */
  function renderMessage(el, message, ranges) {
    var segments = Q.parseAnsi(message);
    el.textContent = "";
    if (!ranges || !ranges.length) {
      if (segments.length === 1 && !hasStyle(segments[0].style)) {
        el.textContent = segments[0].text;
        return;
      }
    }
    var offset = 0;
    var r = 0;
    ranges = ranges || [];
    segments.forEach(function (seg) {
      var parent = hasStyle(seg.style) ? styleSpan(seg.style) : el;
      var text = seg.text;
      var start = offset;
      var end = offset + text.length;
      var pos = start;
      while (pos < end) {
        while (r < ranges.length && ranges[r][1] <= pos) r++;
        var range = ranges[r];
        if (!range || range[0] >= end) {
          parent.appendChild(doc.createTextNode(text.slice(pos - start)));
          pos = end;
        } else if (range[0] > pos) {
          parent.appendChild(doc.createTextNode(text.slice(pos - start, range[0] - start)));
          pos = range[0];
        } else {
          var stop = Math.min(range[1], end);
          var mark = doc.createElement("mark");
          mark.textContent = text.slice(pos - start, stop - start);
          parent.appendChild(mark);
          pos = stop;
        }
      }
      if (parent !== el) el.appendChild(parent);
      offset = end;
    });
  }

  /**
   * A bounded window of log lines in the DOM. Options: `root` (the default container),
   * `containerFor(line)` (e.g. one container per step), `maxLines`, `lineIds` (give each
   * line `id="L<n>"`), `permalinks` (line numbers link to `#L<n>`), `jobLinks` (they link
   * to `/jobs/<id>#L<n>`), `showStep`.
   */
  function LogView(options) {
    this.o = Object.assign({ maxLines: 1000, lineIds: false, permalinks: false, jobLinks: false,
      showStep: true, containerFor: null }, options || {});
    this.root = this.o.root;
    this.records = [];
    this.query = "";
    this.matches = [];
    this.current = -1;
    this.target = null;
    this._containers = [];
    this._ignore(this.root);
  }

  function levelOf(line) {
    return LEVELS.indexOf(line.level) >= 0 ? line.level : "info";
  }

  /** The message as shown: its level is the badge, not repeated as its first word. */
  function shownMessage(line) {
    return Q.dropLevelWord(line.message, levelOf(line));
  }

  LogView.prototype._ignore = function (el) {
    // Alpine need not look at lines: they carry no directives.
    if (el && !el._x_ignoreMutationObserver) {
      el._x_ignoreMutationObserver = true;
      this._containers.push(el);
    }
  };

  LogView.prototype.containerOf = function (line) {
    var el = (this.o.containerFor && this.o.containerFor(line)) || this.root;
    this._ignore(el);
    return el;
  };

  Object.defineProperty(LogView.prototype, "length", { get: function () { return this.records.length; } });
  Object.defineProperty(LogView.prototype, "firstId", {
    get: function () { return this.records.length ? this.records[0].line.id : null; }
  });
  Object.defineProperty(LogView.prototype, "lastId", {
    get: function () { return this.records.length ? this.records[this.records.length - 1].line.id : null; }
  });

  LogView.prototype.render = function (line) {
    var o = this.o;
    var div = doc.createElement("div");
    var level = levelOf(line);
    div.className = "ql-line ql-lv-" + level;
    div.setAttribute("data-id", String(line.id));
    var n = line.line_number;
    if (o.lineIds && n) div.id = "L" + n;
    var ln;
    if (o.permalinks && n) {
      ln = doc.createElement("a");
      ln.href = (o.jobLinks && line.job_id ? "/jobs/" + encodeURIComponent(line.job_id) : "") + "#L" + n;
      ln.title = "Link to line " + n;
    } else {
      ln = doc.createElement("span");
    }
    ln.className = "ql-ln";
    ln.textContent = n ? String(n) : "";
    div.appendChild(ln);
    var ts = doc.createElement("time");
    ts.className = "ql-ts";
    ts.dateTime = line.timestamp || "";
    ts.title = line.timestamp || "";
    ts.textContent = formatTime(line.timestamp);
    div.appendChild(ts);
    var lvl = doc.createElement("span");
    lvl.className = "ql-lvl";
    lvl.textContent = level.toUpperCase();
    div.appendChild(lvl);
    if (o.showStep && line.step_name) {
      var step = doc.createElement("span");
      step.className = "ql-step";
      step.textContent = line.step_name;
      div.appendChild(step);
    }
    var msg = doc.createElement("span");
    msg.className = "ql-msg";
    renderMessage(msg, shownMessage(line), null);
    div.appendChild(msg);
    return div;
  };

  LogView.prototype._plain = function (rec) {
    if (rec.plain === undefined) rec.plain = Q.stripAnsi(shownMessage(rec.line));
    return rec.plain;
  };

  LogView.prototype._match = function (rec) {
    if (!this.query) return false;
    var ranges = Q.findMatches(this._plain(rec), this.query);
    if (!ranges.length) return false;
    rec.ranges = ranges;
    rec.el.classList.add("ql-match");
    renderMessage(rec.el.lastChild, shownMessage(rec.line), ranges);
    return true;
  };

  LogView.prototype._unmatch = function (rec) {
    if (!rec.ranges) return;
    rec.ranges = null;
    rec.el.classList.remove("ql-match", "ql-match-current");
    renderMessage(rec.el.lastChild, shownMessage(rec.line), null);
  };

  /** Append newer lines (older or repeated ones are ignored). Returns {added, trimmed}. */
  LogView.prototype.append = function (lines) {
    var last = this.lastId;
    var frags = new Map();
    var added = [];
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i];
      if (last !== null && line.id <= last) continue;
      last = line.id;
      var rec = { line: line, el: this.render(line) };
      var container = this.containerOf(line);
      if (!frags.has(container)) frags.set(container, doc.createDocumentFragment());
      frags.get(container).appendChild(rec.el);
      this.records.push(rec);
      added.push(rec);
    }
    frags.forEach(function (frag, container) { container.appendChild(frag); });
    if (this.query) {
      var self = this;
      added.forEach(function (rec) { if (self._match(rec)) self.matches.push(rec); });
    }
    var trimmed = this.trimStart(this.records.length - this.o.maxLines);
    return { added: added.length, trimmed: trimmed };
  };

  /** Prepend older lines ("load older"). Returns {added, trimmed} (trimmed at the end). */
  LogView.prototype.prepend = function (lines) {
    var first = this.firstId;
    var older = lines.filter(function (l) { return first === null || l.id < first; });
    older.sort(function (a, b) { return a.id - b.id; });
    var frags = new Map();
    var recs = [];
    for (var i = 0; i < older.length; i++) {
      var rec = { line: older[i], el: this.render(older[i]) };
      var container = this.containerOf(older[i]);
      if (!frags.has(container)) frags.set(container, doc.createDocumentFragment());
      frags.get(container).appendChild(rec.el);
      recs.push(rec);
    }
    frags.forEach(function (frag, container) { container.insertBefore(frag, container.firstChild); });
    this.records = recs.concat(this.records);
    var trimmed = this.trimEnd(this.records.length - this.o.maxLines);
    if (this.query) this.setQuery(this.query, true);
    return { added: recs.length, trimmed: trimmed };
  };

  LogView.prototype._drop = function (gone) {
    if (!gone.length) return;
    gone.forEach(function (rec) { rec.el.remove(); rec.gone = true; });
    if (this.target && this.target.gone) this.target = null;
    if (this.matches.length) {
      var current = this.matches[this.current];
      this.matches = this.matches.filter(function (rec) { return !rec.gone; });
      this.current = current && !current.gone ? this.matches.indexOf(current) : -1;
    }
  };

  LogView.prototype.trimStart = function (n) {
    if (n <= 0) return 0;
    this._drop(this.records.splice(0, n));
    return n;
  };

  LogView.prototype.trimEnd = function (n) {
    if (n <= 0) return 0;
    this._drop(this.records.splice(this.records.length - n, n));
    return n;
  };

  LogView.prototype.clear = function () {
    this._containers.forEach(function (el) { el.textContent = ""; });
    this.records.forEach(function (rec) { rec.gone = true; });
    this.records = [];
    this.matches = [];
    this.current = -1;
    this.target = null;
  };

  LogView.prototype.reset = function (lines) {
    this.clear();
    return this.append(lines);
  };

  /** Search the lines in the window; returns the number of matching lines. */
  LogView.prototype.setQuery = function (query, keepPosition) {
    var self = this;
    var current = this.matches[this.current];
    this.matches.forEach(function (rec) { self._unmatch(rec); });
    this.matches = [];
    this.query = query || "";
    if (this.query) {
      this.records.forEach(function (rec) { if (self._match(rec)) self.matches.push(rec); });
    }
    this.current = keepPosition && current ? this.matches.indexOf(current) : -1;
    if (this.current >= 0) current.el.classList.add("ql-match-current");
    return this.matches.length;
  };

  /** Move to the next (+1) or previous (-1) matching line; returns it. */
  LogView.prototype.step = function (direction) {
    if (!this.matches.length) return null;
    var prev = this.matches[this.current];
    if (prev) prev.el.classList.remove("ql-match-current");
    var n = this.matches.length;
    if (this.current < 0) this.current = direction > 0 ? 0 : n - 1;
    else this.current = (this.current + direction + n) % n;
    var rec = this.matches[this.current];
    rec.el.classList.add("ql-match-current");
    return rec;
  };

  LogView.prototype.findLine = function (number) {
    for (var i = 0; i < this.records.length; i++) {
      if (this.records[i].line.line_number === number) return this.records[i];
    }
    return null;
  };

  LogView.prototype.highlight = function (rec) {
    if (this.target && this.target.el) this.target.el.classList.remove("ql-target");
    this.target = rec;
    if (rec) rec.el.classList.add("ql-target");
  };

  function atBottom(el) {
    return el.scrollHeight - el.scrollTop - el.clientHeight <= 24;
  }

  function scrollToBottom(el) {
    el.scrollTop = el.scrollHeight;
  }

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

  // --- Alpine: shared bits -------------------------------------------------------------

  var connectionMixin = {
    state: "connecting",
    get stateLabel() { return STATE_LABELS[this.state] || this.state; },
    get stateText() {
      return this.state === "ended" ? "disconnected (job finished)" : this.stateLabel;
    },
    get stateTitle() { return STATE_TITLES[this.state] || ""; }
  };

  function mixin(target) {
    Object.getOwnPropertyNames(connectionMixin).forEach(function (name) {
      if (name in target) return;
      Object.defineProperty(target, name, Object.getOwnPropertyDescriptor(connectionMixin, name));
    });
    return target;
  }

  // --- Alpine: the service-logs panel --------------------------------------------------

  function sseServiceLogs(options) {
    options = options || {};
    var view = null;
    var stream = null;
    return mixin({
      level: options.level || "info",
      autoScroll: true,
      paused: false,
      open: true,
      lineCount: 0,
      newLines: 0,
      showTimestamps: true,
      levels: LEVELS,

      init: function () {
        var self = this;
        var box = this.$refs.lines;
        rememberPrefs(this, "serviceLogs", ["open", "level", "showTimestamps"]);
        if (LEVELS.indexOf(this.level) < 0) this.level = "info";
        view = new LogView({ root: box, maxLines: options.maxLines || 1000, showStep: false });
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
        stream = Q.createServiceStream({
          level: this.level, limit: 200, maxLines: view.o.maxLines,
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
      reconnect: function () { if (stream) stream.reconnectNow(); }
    });
  }

  // --- Alpine: a job's log -------------------------------------------------------------

  var WINDOW = 3000;      // lines in the DOM on the job page, at most
  var TAIL = 1000;        // lines loaded at first, and per "load older"

  /**
   * One job's log. `options.mode`: "full" (the job page: steps as sections, search,
   * permalinks, load older, cancel/rerun) or "compact" (a row on /queue: a flat list fed
   * by the page's QueueSSEManager).
   */
  function sseJobLogViewer(jobId, options) {
    options = options || {};
    var compact = options.mode === "compact" || !!options.manager;
    var view = null;
    var stream = null;
    var manager = null;
    var catchUp = null;
    var refreshTimer = null;
    var stepBoxes = null;
    var tick = null;
    var data = mixin({
      jobId: String(jobId),
      compact: compact,
      level: options.level || "debug",
      levels: LEVELS,
      autoScroll: true,
      paused: false,
      showTimestamps: true,
      ended: false,
      lineCount: 0,
      totalCount: null,
      hasOlder: false,
      detached: false,
      newerCount: 0,
      loadingOlder: false,
      locating: false,
      query: "",
      matchCount: 0,
      matchIndex: -1,
      collapsed: {},
      hasGeneral: false,
      message: "",
      busy: false,
      now: Date.now(),

      init: function () {
        var self = this;
        if (!this.job && !compact) {
          var data = doc.getElementById("job-data");
          if (data) this.job = JSON.parse(data.textContent);
        }
        rememberPrefs(this, compact ? "queueLog" : "jobLog", ["showTimestamps"]);
        var box = this.$refs.scroller;
        box.addEventListener("scroll", function () { self.onScroll(); }, { passive: true });
        view = new LogView({
          root: this.$refs.lines, maxLines: compact ? 500 : WINDOW, lineIds: !compact,
          permalinks: true, jobLinks: compact, showStep: compact,
          containerFor: compact ? null : function (line) { return self.stepBox(line.step_name); }
        });
        if (!compact) {
          tick = setInterval(function () { self.now = Date.now(); }, 1000);
          root.addEventListener("hashchange", function () { self.gotoHash(); });
        }
        this.$nextTick(function () { self.connect(); });
      },

      destroy: function () {
        if (stream) stream.close();
        if (manager) manager.disconnectJob(this.jobId);
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
        return durationOf(step, this.now);
      },
      jobDuration: function () { return durationOf(this.job, this.now); },
      toggleStep: function (name) {
        this.collapsed[name] = !this.collapsed[name];
      },
      isFinished: function () { return this.job && Q.isFinished(this.job.status); },
      canCancel: function () { return this.job && (this.job.status === "pending" || this.job.status === "running"); },

      connect: function () {
        var self = this;
        if (compact) {
          manager = options.manager && options.manager !== true ? options.manager : QueueSSEManager.shared();
          manager.connectJob(this.jobId, {
            onLines: function (lines, info) { self.onLines(lines, null, info); },
            onStatus: function (payload) { self.onStatus(payload); },
            onEnd: function (job) { self.onEnd({ job: job }); },
            onState: function (state) { self.state = self.ended ? "ended" : state; }
          });
          return;
        }
        if (stream) stream.close();
        view.clear();
        this.lineCount = 0;
        this.detached = false;
        this.newerCount = 0;
        stream = Q.createJobStream(this.jobId, {
          level: this.level, limit: TAIL, maxLines: 1000,
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
        if (info && info.backfill && meta && !compact) this.hasOlder = !!meta.has_more;
        if (catchUp) {
          Array.prototype.push.apply(catchUp, lines);
          return;
        }
        if (this.detached) {
          this.newerCount += lines.length;
          return;
        }
        var follow = this.autoScroll && !this.paused;
        if (!compact && !follow && view.length + lines.length > WINDOW) {
          // The reader is scrolled up in a full window: leave it still.
          this.detached = true;
          this.newerCount += lines.length;
          return;
        }
        var res = view.append(lines);
        if (res.trimmed) this.hasOlder = true;
        this.lineCount = view.length;
        this.matchCount = view.matches.length;
        this.matchIndex = view.current;
        if (follow) scrollToBottom(this.$refs.scroller);
        if (info && info.backfill && !compact) this.gotoHash(true);
      },

      onStatus: function (payload) {
        var self = this;
        if (compact && payload.job && Q.isFinished(payload.job.status)) {
          this.ended = true;
          this.state = "ended";
        }
        if (!compact && this.job && payload.job) {
          this.job.status = payload.job.status;
          var byName = {};
          (payload.steps || []).forEach(function (s) { byName[s.name] = s.status; });
          (this.job.steps || []).forEach(function (s) {
            if (byName[s.name]) s.status = byName[s.name];
          });
        }
        if (this.$dispatch) this.$dispatch("job-status", { id: this.jobId, status: payload.job.status });
        if (!compact) {
          if (refreshTimer) clearTimeout(refreshTimer);
          refreshTimer = setTimeout(function () { self.refreshJob(); }, 300);
        }
      },

      onEnd: function (payload) {
        this.ended = true;
        this.state = "ended";
        if (payload && payload.job && payload.job.id === this.jobId) {
          if (!compact && this.job) this.job.status = payload.job.status;
          if (this.$dispatch) this.$dispatch("job-status", { id: this.jobId, status: payload.job.status });
        }
        if (!compact) this.refreshJob();
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

      setLevel: function () {
        if (compact) return;   // compact: a CSS filter on the lines
        this.connect();
      },

      clear: function () {
        view.clear();
        if (stream) stream.buffer.clear();
        this.lineCount = 0;
        this.hasOlder = true;
        this.matchCount = 0;
        this.matchIndex = -1;
      },

      toggleAutoScroll: function () {
        if (this.autoScroll) this.jumpToLatest();
      },

      pollQuery: function (extra) {
        return Q.buildQueryParams(Object.assign({ scope: "job", jobId: this.jobId, level: this.level }, extra));
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

      // search
      search: function () {
        this.matchCount = view.setQuery(this.query.trim());
        this.matchIndex = -1;
        if (this.matchCount) this.nextMatch();
      },
      rematch: function () {
        if (!view.query) return;
        this.matchCount = view.setQuery(view.query, true);
        this.matchIndex = view.current;
      },
      nextMatch: function () { this.gotoMatch(view.step(1)); },
      prevMatch: function () { this.gotoMatch(view.step(-1)); },
      gotoMatch: function (rec) {
        this.matchIndex = view.current;
        if (!rec) return;
        this.reveal(rec);
      },
      get matchLabel() {
        if (!this.query.trim()) return "";
        if (!this.matchCount) return "No matches in the loaded lines";
        return (this.matchIndex + 1) + " of " + this.matchCount + " lines";
      },

      reveal: function (rec) {
        var self = this;
        var name = rec.line.step_name;
        var key = name && stepBoxes && stepBoxes.has(name) ? name : "";
        if (this.collapsed[key]) this.collapsed[key] = false;
        this.paused = true;
        this.$nextTick(function () {
          rec.el.scrollIntoView({ block: "center" });
          // scrolling up is a pause; the scroll event says so
          self.paused = !atBottom(self.$refs.scroller);
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
          return Promise.all([
            apiFetch("/api/logs?" + self.pollQuery({ before: line.id + 1, limit: 200 })),
            apiFetch("/api/logs?" + self.pollQuery({ after: line.id, limit: 800 }))
          ]).then(function (both) {
            if (!both[0].ok || !both[1].ok) return;
            var lines = (both[0].body.logs || []).concat(both[1].body.logs || []);
            var live = !(both[1].body.meta && both[1].body.meta.has_more);
            self.detached = !live;
            self.newerCount = 0;
            view.reset(lines);
            self.hasOlder = !!(both[0].body.meta && both[0].body.meta.has_more);
            self.lineCount = view.length;
            self.message = line.line_number === n ? "" : "Line " + n + " is not shown at this level; nearest line shown.";
            self.rematch();
            var rec = view.findLine(line.line_number);
            view.highlight(rec);
            if (rec) self.reveal(rec);
          });
        }).catch(function () {
          self.message = "Could not load line " + n + ".";
        }).then(function () {
          self.locating = false;
          if (self.message && self.message.indexOf("Finding") === 0) self.message = "";
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
    // Compact rows live inside the queue's x-for: `job` there is the row's job, not ours.
    if (!compact) data.job = options.job || null;
    return data;
  }

  // --- Alpine: pages -------------------------------------------------------------------

  function jobHelpers(target) {
    target.duration = function (job) { return durationOf(job, this.now); };
    target.ago = function (iso) { return timeAgo(iso, this.now); };
    target.when = formatDateTime;
    target.jobUrl = function (job) { return "/jobs/" + encodeURIComponent(job.id); };
    target.errorCount = function (job) { return (job.log_counts && job.log_counts.error) || 0; };
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

  return {
    LogView: LogView,
    QueueSSEManager: QueueSSEManager,
    sseServiceLogs: sseServiceLogs,
    sseJobLogViewer: sseJobLogViewer,
    quaeroHome: quaeroHome,
    quaeroQueue: quaeroQueue,
    quaeroShell: quaeroShell,
    QuaeroUI: {
      renderMessage: renderMessage, formatTime: formatTime, timeAgo: timeAgo,
      durationOf: durationOf, apiFetch: apiFetch, STATE_LABELS: STATE_LABELS
    }
  };
});
