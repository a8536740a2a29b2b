/*
 * The settings page (/settings, admins only): API keys listed, made (the secret shown
 * once) and revoked, over /api/keys. `QuaeroSettings`, `quaeroSettings` for Alpine; needs
 * log-http.js. Names and patterns are shown as text only (x-text).
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroHttp || require("./log-http.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroSettings = api;
  if (root.document) {
    root.document.addEventListener("alpine:init", function () {
      root.Alpine.data("quaeroSettings", api.quaeroSettings);
    });
  }
})(typeof window !== "undefined" ? window : globalThis, function (root, H) {
  "use strict";

  var SCOPES = ["ingest", "read", "operate", "admin"];

  /** The body of POST /api/keys from the form's fields (pure). */
  function keyRequest(form) {
    var body = { name: (form.name || "").trim(), scopes: SCOPES.filter(function (s) { return form.scopes[s]; }) };
    if (form.jobs && form.jobs.trim()) body.jobs = form.jobs.trim();
    if (form.expires) {
      var at = new Date(form.expires);   // datetime-local: the browser's time zone
      if (!isNaN(at.getTime())) body.expires_at = at.toISOString();
    }
    return body;
  }

  function quaeroSettings() {
    return {
      keys: [], loading: true, error: "", busy: false, created: null, confirming: null,
      form: { name: "", jobs: "", expires: "", scopes: { ingest: true, read: false, operate: false, admin: false } },
      scopeNames: SCOPES,
      init: function () { this.load(); },
      load: function () {
        var self = this;
        return H.apiFetch("/api/keys").then(function (r) {
          self.loading = false;
          if (r.ok) self.keys = r.body.keys || [];
          else self.error = r.body.error || ("HTTP " + r.status);
        });
      },
      create: function () {
        var self = this;
        self.busy = true;
        self.error = "";
        self.created = null;
        return H.apiFetch("/api/keys", { method: "POST", json: keyRequest(self.form) }).then(function (r) {
          self.busy = false;
          if (!r.ok) { self.error = r.body.error || ("HTTP " + r.status); return; }
          self.created = r.body;
          self.form.name = "";
          self.form.jobs = "";
          self.form.expires = "";
          return self.load();
        });
      },
      revoke: function (key) {
        var self = this;
        if (self.confirming !== key.id) { self.confirming = key.id; return; }
        self.confirming = null;
        return H.apiFetch("/api/keys/" + encodeURIComponent(key.id), { method: "DELETE" }).then(function (r) {
          if (!r.ok) self.error = r.body.error || ("HTTP " + r.status);
          if (self.created && self.created.id === key.id) self.created = null;
          return self.load();
        });
      },
      when: function (iso) { return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, " UTC") : "never"; }
    };
  }

  return { quaeroSettings: quaeroSettings, keyRequest: keyRequest, SCOPES: SCOPES };
});
