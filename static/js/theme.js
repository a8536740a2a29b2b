/*
 * Light or dark, before the page paints: the remembered choice (localStorage
 * "quaero.theme": "light" or "dark") as <html data-theme>, else none, and the CSS follows
 * prefers-color-scheme. Loaded without defer, in <head>. The toggle is in page-keys.js.
 */
(function () {
  "use strict";
  try {
    var t = window.localStorage.getItem("quaero.theme");
    if (t === "light" || t === "dark") document.documentElement.setAttribute("data-theme", t);
  } catch (e) { /* storage disabled: follow the system */ }
})();
