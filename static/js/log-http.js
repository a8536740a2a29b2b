/*
 * HTTP for the pages: `apiFetch` (same-origin cookie, JSON, the CSRF header on writes) and
 * the way to the login page when the session is gone. `QuaeroHttp`.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root);
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroHttp = api;
})(typeof window !== "undefined" ? window : globalThis, function (root) {
  "use strict";

  var doc = root.document;

  function csrfToken() {
    var meta = doc && doc.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // Signing out ends the session before its answer (a redirect, perhaps to the identity
  // provider's sign-out) arrives: a poll refused meanwhile must not send the page to the
  // login page instead, cancelling that redirect.
  var leaving = false;
  if (doc && doc.addEventListener) {
    doc.addEventListener("submit", function (event) {
      if (event.target && event.target.classList && event.target.classList.contains("logout")) {
        leaving = true;
      }
    });
  }

  function toLogin() {
    if (!doc || leaving) return;
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

  return { csrfToken: csrfToken, toLogin: toLogin, apiFetch: apiFetch };
});
