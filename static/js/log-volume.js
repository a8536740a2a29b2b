/*
 * Log volume: the histogram of `GET /api/logs/histogram` drawn as SVG by this code
 * (stacked bars per level; errors and warnings in their own colours, on top), with click
 * and brush to pick a time range, and arrow keys + Enter for the keyboard. Also the
 * search by time the pages use to show "the lines from then": a bisection over line ids.
 * `QuaeroVolume`; needs log-http.js. Pure: histogramBars, bucketAt, rangeOf, bisectTime.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroHttp || require("./log-http.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroVolume = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, H) {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  // bottom to top: the quiet levels first, so that errors and warnings sit on top
  var STACK = ["debug", "info", "warn", "error"];

  /** Rectangles for `buckets` in a `width` x `height` box: `{bucket, level, x, y, w, h}`;
   * heights scale to the fullest bucket (a bucket with lines is at least 1 px tall). Pure. */
  function histogramBars(buckets, width, height) {
    var n = buckets.length;
    if (!n) return [];
    var max = 0;
    buckets.forEach(function (b) {
      var sum = 0;
      STACK.forEach(function (lv) { sum += b.counts[lv] || 0; });
      if (sum > max) max = sum;
    });
    var bw = width / n;
    var gap = bw > 4 ? 1 : 0;
    var out = [];
    buckets.forEach(function (b, i) {
      var y = height;
      STACK.forEach(function (lv) {
        var c = b.counts[lv] || 0;
        if (!c) return;
        var h = Math.max(1, (c / max) * (height - 2));
        y -= h;
        out.push({ bucket: i, level: lv, x: i * bw, y: y, w: Math.max(1, bw - gap), h: h, count: c });
      });
    });
    return out;
  }

  /** The bucket under `x` (0..width), clamped. Pure. */
  function bucketAt(x, width, n) {
    return Math.min(n - 1, Math.max(0, Math.floor((x / width) * n)));
  }

  /** `{start, end}` (ISO strings) of buckets a..b (either order). Pure. */
  function rangeOf(buckets, a, b) {
    var lo = Math.min(a, b), hi = Math.max(a, b);
    return { start: buckets[lo].start, end: buckets[hi].end };
  }

  /**
   * The id of the first line at or after time `t` (ms): bisection over ids with
   * `probe(after)` resolving to the first line with a larger id (or null). Lines come in
   * id order and nearly in time order; about log2(hi) probes. Resolves to a line or null.
   */
  function bisectTime(probe, t, hi) {
    var lo = 0;
    var best = null;
    var step = function () {
      if (lo >= hi) return Promise.resolve(best);
      var mid = Math.floor((lo + hi) / 2);
      return probe(mid).then(function (line) {
        if (!line) { hi = mid; return step(); }
        if (Date.parse(line.timestamp) >= t) { best = line; hi = mid; } else { lo = line.id; }
        return step();
      });
    };
    return step();
  }

  function el(name, attrs) {
    var node = root.document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    return node;
  }

  function fmt(iso) {
    var d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  /** Draw `buckets` into `svg` (its viewBox is the box; it scales to its CSS width). */
  function draw(svg, buckets, selected) {
    var W = 600, Hh = 40;
    svg.setAttribute("viewBox", "0 0 " + W + " " + Hh);
    svg.setAttribute("preserveAspectRatio", "none");
    var frag = root.document.createDocumentFragment();
    frag.appendChild(el("rect", { x: 0, y: 0, width: W, height: Hh, class: "vol-bg" }));
    histogramBars(buckets, W, Hh).forEach(function (r) {
      var rect = el("rect", { x: r.x.toFixed(2), y: r.y.toFixed(2), width: r.w.toFixed(2),
        height: r.h.toFixed(2), class: "vol-" + r.level });
      var title = el("title", {});
      title.textContent = r.count + " " + r.level + " lines, " + fmt(buckets[r.bucket].start) + "–" + fmt(buckets[r.bucket].end);
      rect.appendChild(title);
      frag.appendChild(rect);
    });
    if (selected && buckets.length) {
      var bw = W / buckets.length;
      var lo = Math.min(selected[0], selected[1]), hi = Math.max(selected[0], selected[1]);
      frag.appendChild(el("rect", { x: lo * bw, y: 0, width: (hi - lo + 1) * bw, height: Hh, class: "vol-sel" }));
    }
    svg.textContent = "";
    svg.appendChild(frag);
  }

  /**
   * Alpine component for one histogram. `o.query()` returns the histogram's query string
   * (or null: nothing to draw); `o.live()` true refreshes every 5 s, and once more when it
   * turns false (the job ended: its last lines came after the last tick). Picking a range
   * dispatches `volume-range` with `{start, end}` (ms) on the component's element.
   */
  function logVolume(o) {
    var timer = null;
    var pending = null;
    var last = null;
    var wasLive = false;   // o.live() at the last watch
    var asked = 0;         // refreshes asked for: only the newest one's answer is drawn
    var data = [];
    return {
      total: 0,
      label: "",
      cursor: -1,
      brushing: null,
      init: function () {
        var self = this;
        timer = setInterval(function () { if (o.live && o.live()) self.refresh(); }, 5000);
      },
      destroy: function () { if (timer) clearInterval(timer); if (pending) clearTimeout(pending); },
      /** From `x-effect="watch(query())"`: a changed query redraws (typing is debounced),
       * and so does the end of `o.live()`, read here so that the effect runs again when it
       * changes: the lines committed between the last 5-s tick and a job's end were
       * otherwise never counted (the job page said 5,070 lines and 21 warnings of 5,071
       * and 22 until reloaded). */
      watch: function (q) {
        var self = this;
        var live = !!(o.live && o.live());
        var ended = wasLive && !live;
        wasLive = live;
        if (q === last && !ended) return;
        var first = last === null;
        last = q;
        if (pending) clearTimeout(pending);
        pending = setTimeout(function () { pending = null; self.refresh(); }, first || ended ? 0 : 300);
      },
      refresh: function () {
        var self = this;
        var n = ++asked;
        var q = o.query();
        if (!q) { data = []; this.total = 0; this.redraw(); return Promise.resolve(); }
        return H.apiFetch("/api/logs/histogram?" + q).then(function (res) {
          // an older answer (a tick's, asked before the job's last lines) comes after a
          // newer one: the newer one stands
          if (!res.ok || n !== asked) return;
          data = res.body.buckets || [];
          self.total = res.body.total || 0;
          self.redraw();
        }, function () {});
      },
      redraw: function () {
        var sel = this.brushing ? [this.brushing.from, this.brushing.to] : (this.cursor >= 0 ? [this.cursor, this.cursor] : null);
        draw(this.$refs.svg, data, sel);
        var err = 0, warn = 0;
        data.forEach(function (b) { err += b.counts.error; warn += b.counts.warn; });
        this.label = data.length ? this.total + " lines from " + fmt(data[0].start) + " to " + fmt(data[data.length - 1].end) +
          (err ? ", " + err + " errors" : "") + (warn ? ", " + warn + " warnings" : "") : "no lines";
      },
      at: function (ev) {
        var box = this.$refs.svg.getBoundingClientRect();
        return bucketAt(ev.clientX - box.left, box.width, data.length);
      },
      down: function (ev) {
        if (!data.length) return;
        var b = this.at(ev);
        this.brushing = { from: b, to: b };
        if (this.$refs.svg.setPointerCapture) this.$refs.svg.setPointerCapture(ev.pointerId);
        this.redraw();
      },
      move: function (ev) {
        if (!this.brushing) return;
        var b = this.at(ev);
        if (b !== this.brushing.to) { this.brushing.to = b; this.redraw(); }
      },
      up: function () {
        if (!this.brushing) return;
        var r = this.brushing;
        this.brushing = null;
        this.cursor = r.to;
        this.pick(r.from, r.to);
      },
      key: function (ev) {
        if (!data.length) return;
        if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
          ev.preventDefault();
          var d = ev.key === "ArrowRight" ? 1 : -1;
          this.cursor = this.cursor < 0 ? (d > 0 ? 0 : data.length - 1) : Math.min(data.length - 1, Math.max(0, this.cursor + d));
          this.redraw();
        } else if ((ev.key === "Enter" || ev.key === " ") && this.cursor >= 0) {
          ev.preventDefault();
          this.pick(this.cursor, this.cursor);
        }
      },
      pick: function (a, b) {
        this.redraw();
        var r = rangeOf(data, a, b);
        this.$dispatch("volume-range", { start: Date.parse(r.start), end: Date.parse(r.end) });
      },
      get cursorText() {
        if (this.cursor < 0 || !data[this.cursor]) return "";
        var b = data[this.cursor];
        return fmt(b.start) + "–" + fmt(b.end) + ": " + b.counts.error + " errors, " + b.counts.warn +
          " warnings, " + (b.counts.info + b.counts.debug) + " other lines. Enter shows them.";
      }
    };
  }

  return { histogramBars: histogramBars, bucketAt: bucketAt, rangeOf: rangeOf, bisectTime: bisectTime,
    logVolume: logVolume, draw: draw };
});
