/*
 * Pure formatting for the log pages (no DOM): ANSI colour codes as styled segments, the
 * level word a message starts with, search ranges, durations and times. Loaded first;
 * `QuaeroFormat` in the browser, `require("./log-format.js")` in node.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root);
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroFormat = api;
})(typeof window !== "undefined" ? window : globalThis, function (root) {
  "use strict";

  var LEVELS = ["debug", "info", "warn", "error"];
  var FINISHED = ["completed", "failed", "cancelled", "deleted"];

  // --- ANSI colour codes ---------------------------------------------------------------

  var CUBE = [0, 95, 135, 175, 215, 255];

  function hex2(n) {
    var s = Math.max(0, Math.min(255, n | 0)).toString(16);
    return s.length < 2 ? "0" + s : s;
  }

  function color256(n) {
    if (n < 16) return n;                              // a theme colour (CSS class)
    if (n < 232) {
      n -= 16;
      return "#" + hex2(CUBE[Math.floor(n / 36)]) + hex2(CUBE[Math.floor(n / 6) % 6]) + hex2(CUBE[n % 6]);
    }
    var g = 8 + (n - 232) * 10;
    return "#" + hex2(g) + hex2(g) + hex2(g);
  }

  // CSI ... final byte, OSC ... BEL/ST, and lone two-byte escapes
  var ESCAPES = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;

  function applySgr(style, params) {
    var codes = params === "" ? [0] : params.split(/[;:]/).map(function (p) { return p === "" ? 0 : Number(p); });
    for (var i = 0; i < codes.length; i++) {
      var c = codes[i];
      if (c === 0) { style = {}; }
      else if (c === 1) style.bold = true;
      else if (c === 2) style.dim = true;
      else if (c === 3) style.italic = true;
      else if (c === 4) style.underline = true;
      else if (c === 7) style.inverse = true;
      else if (c === 9) style.strike = true;
      else if (c === 22) { delete style.bold; delete style.dim; }
      else if (c === 23) delete style.italic;
      else if (c === 24) delete style.underline;
      else if (c === 27) delete style.inverse;
      else if (c === 29) delete style.strike;
      else if (c >= 30 && c <= 37) style.fg = c - 30;
      else if (c >= 90 && c <= 97) style.fg = c - 90 + 8;
      else if (c === 39) delete style.fg;
      else if (c >= 40 && c <= 47) style.bg = c - 40;
      else if (c >= 100 && c <= 107) style.bg = c - 100 + 8;
      else if (c === 49) delete style.bg;
      else if (c === 38 || c === 48) {
        var key = c === 38 ? "fg" : "bg";
        if (codes[i + 1] === 5 && i + 2 < codes.length) {
          style[key] = color256(Math.max(0, Math.min(255, codes[i + 2])));
          i += 2;
        } else if (codes[i + 1] === 2 && i + 4 < codes.length) {
          style[key] = "#" + hex2(codes[i + 2]) + hex2(codes[i + 3]) + hex2(codes[i + 4]);
          i += 4;
        } else {
          break;
        }
      }
    }
    return style;
  }

  /**
   * Text with ANSI escapes as segments `{text, style}`; `style` may hold `fg`/`bg` (0-15:
   * a theme colour, or "#rrggbb"), `bold`, `dim`, `italic`, `underline`, `inverse`,
   * `strike`. Only SGR (`ESC[...m`) changes style; every other escape is dropped. The
   * segments are plain text: the renderer puts them into the DOM with `textContent`.
   */
  function parseAnsi(text) {
    text = text === undefined || text === null ? "" : String(text);
    var segments = [];
    var style = {};
    if (text.indexOf("\x1b") < 0) {
      return text ? [{ text: text, style: {} }] : [];
    }
    var last = 0;
    var m;
    ESCAPES.lastIndex = 0;
    while ((m = ESCAPES.exec(text)) !== null) {
      if (m.index > last) segments.push({ text: text.slice(last, m.index), style: style });
      last = ESCAPES.lastIndex;
      if (m[2] === "m") style = applySgr(Object.assign({}, style), m[1]);
      if (m[0] === "") ESCAPES.lastIndex++;
    }
    if (last < text.length) segments.push({ text: text.slice(last), style: style });
    return segments;
  }

  function stripAnsi(text) {
    return parseAnsi(text).map(function (s) { return s.text; }).join("");
  }

  // The words a producer starts a line with to name its level (as the runner reads them).
  var LEVEL_WORDS = { trace: "debug", debug: "debug", dbg: "debug", info: "info", notice: "info",
    warn: "warn", warning: "warn", error: "error", err: "error", fatal: "error",
    critical: "error", crit: "error" };
  var SGR = "(?:\x1b\\[[0-9;]*m)*";
  var LEVEL_WORD_RE = new RegExp("^(" + SGR + ")[ \t]{0,8}(?:\\[[ \t]*([A-Za-z]{3,8})[ \t]*\\]" +
    "|<([A-Za-z]{3,8})>|([A-Za-z]{3,8})(" + SGR + ")[ \t]*:|([A-Z]{3,8})(?=" + SGR + "(?:[ \t]|$)))" +
    "(" + SGR + ")[ \t]*");

  /**
   * `message` without the level word it starts with (`ERROR: x`, `[debug] x`, `WARNING x`,
   * colour codes around it kept) when that word names `level`: the page shows the level
   * once, as its badge. Any other message is returned as it is.
   */
  function dropLevelWord(message, level) {
    message = message === undefined || message === null ? "" : String(message);
    var m = LEVEL_WORD_RE.exec(message);
    if (!m) return message;
    var word = (m[2] || m[3] || m[4] || m[6]).toLowerCase();
    var rest = message.slice(m[0].length);
    if (LEVEL_WORDS[word] !== level || !stripAnsi(rest).trim()) return message;
    return m[1] + (m[5] || "") + m[7] + rest;
  }

  // --- search and formatting helpers ---------------------------------------------------

  /** `[start, end)` ranges of `query` in `text`, case-insensitive, not overlapping. */
  function findMatches(text, query) {
    var ranges = [];
    if (!query) return ranges;
    var hay = String(text).toLowerCase();
    var needle = String(query).toLowerCase();
    var from = 0;
    var at;
    while ((at = hay.indexOf(needle, from)) >= 0) {
      ranges.push([at, at + needle.length]);
      from = at + needle.length;
    }
    return ranges;
  }

  /** "850 ms", "12.3 s", "4m 05s", "2h 03m". */
  function formatDuration(ms) {
    if (ms === null || ms === undefined || !isFinite(ms) || ms < 0) return "";
    if (ms < 1000) return Math.round(ms) + " ms";
    var s = ms / 1000;
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
    var total = Math.round(s);
    var h = Math.floor(total / 3600);
    var m = Math.floor((total % 3600) / 60);
    var sec = total % 60;
    var pad = function (n) { return n < 10 ? "0" + n : String(n); };
    return h ? h + "h " + pad(m) + "m" : m + "m " + pad(sec) + "s";
  }

  function isFinished(status) {
    return FINISHED.indexOf(status) >= 0;
  }

  // --- times ---------------------------------------------------------------------------


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
    return formatDuration(Math.max(0, end - start));
  }

  return {
    LEVELS: LEVELS,
    parseAnsi: parseAnsi,
    stripAnsi: stripAnsi,
    color256: color256,
    dropLevelWord: dropLevelWord,
    findMatches: findMatches,
    formatDuration: formatDuration,
    isFinished: isFinished,
    formatTime: formatTime,
    formatDateTime: formatDateTime,
    timeAgo: timeAgo,
    durationOf: durationOf
  };
});
