/*
 * What every page shares beyond its components: the keyboard (`/` search, `n`/`N` next and
 * previous match, `g`/`G` top and bottom, `f` follow, `Esc` leaves search, `?` lists them),
 * the light/dark toggle (remembered), and the service panel's size (dragged or arrowed,
 * remembered). Keys become `quaero-key` events on window with `{action}`; the page's
 * component acts on them. `QuaeroKeys`. Pure: keyAction, nextTheme, clampHeight.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root);
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroKeys = api;
})(typeof window !== "undefined" ? window : globalThis, function (root) {
  "use strict";

  var KEYS = { "/": "search", n: "next", N: "prev", g: "top", G: "bottom", f: "follow", "?": "help" };

  /** The action of a keydown, or null. In a text field only Esc counts. Pure. */
  function keyAction(ev, inField) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return null;
    if (ev.key === "Escape") return "escape";
    if (inField) return null;
    return KEYS[ev.key] || null;
  }

  /** The theme after a toggle: the opposite of what shows now. Pure. */
  function nextTheme(stored, systemDark) {
    var now = stored === "light" || stored === "dark" ? stored : (systemDark ? "dark" : "light");
    return now === "dark" ? "light" : "dark";
  }

  /** A panel height within [min, max] px. Pure. */
  function clampHeight(h, viewport) {
    return Math.round(Math.min(Math.max(h, 36), Math.max(80, viewport * 0.8)));
  }

  function isField(t) {
    return !!t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }

  function store(key, value) {
    try { root.localStorage.setItem(key, value); } catch (e) { /* storage disabled */ }
  }

  function read(key) {
    try { return root.localStorage.getItem(key); } catch (e) { return null; }
  }

  /** Alpine component on <body>: the help overlay and the theme toggle. */
  function quaeroKeys() {
    return {
      help: false,
      theme: "",
      init: function () {
        var self = this;
        this.theme = this.effectiveTheme();
        root.document.addEventListener("keydown", function (ev) { self.onKey(ev); });
      },
      effectiveTheme: function () {
        var t = root.document.documentElement.getAttribute("data-theme");
        if (t) return t;
        return root.matchMedia && root.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
      },
      toggleTheme: function () {
        var dark = root.matchMedia && root.matchMedia("(prefers-color-scheme: dark)").matches;
        var t = nextTheme(root.document.documentElement.getAttribute("data-theme"), dark);
        root.document.documentElement.setAttribute("data-theme", t);
        store("quaero.theme", t);
        this.theme = t;
      },
      onKey: function (ev) {
        var action = keyAction(ev, isField(ev.target));
        if (!action) return;
        if (action === "help") { ev.preventDefault(); this.help = !this.help; return; }
        if (action === "escape") {
          if (this.help) { this.help = false; return; }
          if (isField(ev.target) && ev.target.type === "search") ev.target.blur();
        }
        if (action === "search") {
          var box = root.document.querySelector("[data-search-box]") || root.document.querySelector("input[type=search]");
          if (box) { ev.preventDefault(); box.focus(); box.select(); }
          return;
        }
        root.dispatchEvent(new CustomEvent("quaero-key", { detail: { action: action } }));
        if (action !== "escape") ev.preventDefault();
      }
    };
  }

  /** The service panel's height: a separator that drags (pointer) or steps (arrows). */
  function panelSizer() {
    return {
      height: null,
      init: function () {
        var h = Number(read("quaero.svcHeight"));
        if (h > 0) this.apply(h);
      },
      apply: function (h) {
        this.height = clampHeight(h, root.innerHeight);
        root.document.documentElement.style.setProperty("--svc-height", this.height + "px");
      },
      save: function () { if (this.height) store("quaero.svcHeight", String(this.height)); },
      current: function () { return this.$el.closest(".svc").getBoundingClientRect().height; },
      drag: function (ev) {
        var self = this;
        var startY = ev.clientY, startH = this.current();
        ev.preventDefault();
        var move = function (e) { self.apply(startH + (startY - e.clientY)); };
        var up = function () {
          root.removeEventListener("pointermove", move);
          root.removeEventListener("pointerup", up);
          self.save();
        };
        root.addEventListener("pointermove", move);
        root.addEventListener("pointerup", up);
      },
      step: function (ev) {
        var d = ev.key === "ArrowUp" ? 40 : ev.key === "ArrowDown" ? -40 : 0;
        if (!d) return;
        ev.preventDefault();
        this.apply(this.current() + d);
        this.save();
      }
    };
  }

  return { keyAction: keyAction, nextTheme: nextTheme, clampHeight: clampHeight,
    quaeroKeys: quaeroKeys, panelSizer: panelSizer };
});
