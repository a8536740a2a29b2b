/*
 * The log view: log lines rendered into a container as DOM nodes built with textContent
 * (messages are untrusted: never HTML), ANSI colours as classed spans, line numbers as
 * text with permalinks, search highlights; a bounded window of lines (LogView). Also the
 * bits every log component shares: remembered settings and the connection state as text.
 * A line with attributes or a trace id has a marker that unfolds its fields (log-attrs.js).
 * `QuaeroView`; needs log-format.js and log-attrs.js.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroFormat || require("./log-format.js"), root.QuaeroAttrs || require("./log-attrs.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroView = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, F, A) {
  "use strict";

  var doc = root.document;
  var LEVELS = F.LEVELS;

  // --- remembered settings and the connection state, shared by the components ----------

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
    var segments = F.parseAnsi(message);
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
   * to `/jobs/<id>#L<n>`), `showStep`, `onFilter(field)` (a value of an unfolded line's
   * fields was clicked: filter by it), `traceUrl` (QUAERO_TRACE_URL's template).
   */
  function LogView(options) {
    this.o = Object.assign({ maxLines: 1000, lineIds: false, permalinks: false, jobLinks: false,
      showStep: true, containerFor: null, onFilter: null, traceUrl: "" }, options || {});
    this.root = this.o.root;
    this.records = [];
    this.query = "";
    this.matches = [];
    this.target = null;
    this.unfolded = null;     // the one record whose fields are shown
    this._containers = [];
    var self = this;
    // one listener per container for every line's marker, not one per line
    this._onClick = function (event) { self._clicked(event); };
    this._track(this.root);
  }

  function levelOf(line) {
    return LEVELS.indexOf(line.level) >= 0 ? line.level : "info";
  }

  /** The message as shown: its level is the badge, not repeated as its first word. */
  function shownMessage(line) {
    return F.dropLevelWord(line.message, levelOf(line));
  }

  LogView.prototype._track = function (el) {
    if (el && this._containers.indexOf(el) < 0) {
      this._containers.push(el);
      if (el.addEventListener) el.addEventListener("click", this._onClick);
    }
  };

  LogView.prototype._clicked = function (event) {
    var target = event.target;
    var marker = target && target.closest ? target.closest(".ql-attr-btn") : null;
    if (!marker) return;
    var lineEl = marker.closest(".ql-line");
    for (var i = this.records.length - 1; i >= 0; i--) {
      if (this.records[i].el === lineEl) { this.toggleFields(this.records[i]); return; }
    }
  };

  /** Show the fields of `rec` under its line (closing those of any other), or hide them. */
  LogView.prototype.toggleFields = function (rec) {
    var open = this.unfolded;
    this._fold();
    if (!rec || open === rec || rec.gone) return;
    var self = this;
    var panel = A.renderFields(doc, rec.line, {
      traceUrl: this.o.traceUrl,
      onFilter: this.o.onFilter ? function (field) { self.o.onFilter(field, rec.line); } : null
    });
    rec.el.parentNode.insertBefore(panel, rec.el.nextSibling);
    rec.fields = panel;
    this.unfolded = rec;
    var marker = rec.el.querySelector(".ql-attr-btn");
    if (marker) marker.setAttribute("aria-expanded", "true");
  };

  LogView.prototype._fold = function () {
    var rec = this.unfolded;
    if (!rec) return;
    this.unfolded = null;
    if (rec.fields) rec.fields.remove();
    rec.fields = null;
    var marker = rec.el.querySelector(".ql-attr-btn");
    if (marker) marker.setAttribute("aria-expanded", "false");
  };

  LogView.prototype.containerOf = function (line) {
    var el = (this.o.containerFor && this.o.containerFor(line)) || this.root;
    this._track(el);
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
    ts.textContent = F.formatTime(line.timestamp);
    div.appendChild(ts);
    var lvl = doc.createElement("span");
    lvl.className = "ql-lvl";
    lvl.textContent = level.toUpperCase();
    div.appendChild(lvl);
    if (line.source) {
      var src = doc.createElement("span");
      src.className = "ql-src";
      src.title = "source";
      src.textContent = line.source;
      div.appendChild(src);
    }
    if (o.showStep && line.step_name) {
      var step = doc.createElement("span");
      step.className = "ql-step";
      step.textContent = line.step_name;
      div.appendChild(step);
    }
    if (A.hasFields(line)) div.appendChild(this._marker(line));
    var msg = doc.createElement("span");
    msg.className = "ql-msg";
    renderMessage(msg, shownMessage(line), null);
    div.appendChild(msg);
    return div;
  };

  /** The marker of a line with fields: a small button (its message stays the last child). */
  LogView.prototype._marker = function (line) {
    var n = A.fieldsOf(line).length;
    var b = doc.createElement("button");
    b.type = "button";
    b.className = "ql-attr-btn";
    b.setAttribute("aria-expanded", "false");
    b.setAttribute("aria-label", "Fields of this line (" + n + ")");
    b.title = "Show the " + n + (n === 1 ? " field" : " fields") + " of this line (attributes, trace)";
    b.textContent = "{" + n + "}";
    return b;
  };

  LogView.prototype._plain = function (rec) {
    if (rec.plain === undefined) rec.plain = F.stripAnsi(shownMessage(rec.line));
    return rec.plain;
  };

  LogView.prototype._match = function (rec) {
    if (!this.query) return false;
    var ranges = F.findMatches(this._plain(rec), this.query);
    if (!ranges.length) return false;
    rec.ranges = ranges;
    rec.el.classList.add("ql-match");
    renderMessage(rec.el.lastChild, shownMessage(rec.line), ranges);
    return true;
  };

  LogView.prototype._unmatch = function (rec) {
    if (!rec.ranges) return;
    rec.ranges = null;
    rec.el.classList.remove("ql-match");
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
    if (this.o.onAdded && added.length) this.o.onAdded(added, false, this);
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
    if (this.o.onAdded && recs.length) this.o.onAdded(recs, true, this);
    var trimmed = this.trimEnd(this.records.length - this.o.maxLines);
    if (this.query) this.setQuery(this.query);
    return { added: recs.length, trimmed: trimmed };
  };

  LogView.prototype._drop = function (gone) {
    if (!gone.length) return;
    if (this.unfolded && gone.indexOf(this.unfolded) >= 0) this._fold();
    gone.forEach(function (rec) { rec.el.remove(); rec.gone = true; });
    if (this.target && this.target.gone) this.target = null;
    if (this.matches.length) this.matches = this.matches.filter(function (rec) { return !rec.gone; });
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
    this.target = null;
    this.unfolded = null;
  };

  LogView.prototype.reset = function (lines) {
    this.clear();
    return this.append(lines);
  };

  /** Mark the lines in the window that contain `query`; returns how many do. */
  LogView.prototype.setQuery = function (query) {
    var self = this;
    this.matches.forEach(function (rec) { self._unmatch(rec); });
    this.matches = [];
    this.query = query || "";
    if (this.query) {
      this.records.forEach(function (rec) { if (self._match(rec)) self.matches.push(rec); });
    }
    return this.matches.length;
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


  /**
   * Lines carry no Alpine directives: the methods that change them run inside
   * `Alpine.mutateDom`, so that Alpine's mutation observer does not walk thousands of
   * lines (outside Alpine, in tests, they just run).
   */
  ["append", "prepend", "trimStart", "trimEnd", "clear", "reset", "setQuery", "highlight", "toggleFields"].forEach(function (name) {
    var method = LogView.prototype[name];
    LogView.prototype[name] = function () {
      var self = this;
      var args = arguments;
      var run = function () { return method.apply(self, args); };
      return root.Alpine && root.Alpine.mutateDom ? root.Alpine.mutateDom(run) : run();
    };
  });

  function atBottom(el) {
    return el.scrollHeight - el.scrollTop - el.clientHeight <= 24;
  }

  function scrollToBottom(el) {
    el.scrollTop = el.scrollHeight;
  }

  return {
    LogView: LogView, renderMessage: renderMessage, atBottom: atBottom,
    scrollToBottom: scrollToBottom, rememberPrefs: rememberPrefs, withConnectionState: mixin,
    STATE_LABELS: STATE_LABELS
  };
});
