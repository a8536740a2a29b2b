/*
 * The alerts page (/alerts): "Send a test notification" posts
 * `POST /api/alerts/<rule>/test` and says what happened in the page's status line.
 * Plain script (no Alpine component): the table is rendered by the server. Needs log-http.js.
 */
(function (root) {
  "use strict";
  var doc = root.document;
  if (!doc) return;

  function say(text) {
    var status = doc.querySelector("[data-alerts-status]");
    if (!status) return;
    status.hidden = false;
    status.textContent = text;
  }

  function test(button) {
    var rule = button.getAttribute("data-test-rule");
    button.disabled = true;
    root.QuaeroHttp.apiFetch("/api/alerts/" + encodeURIComponent(rule) + "/test", { method: "POST" })
      .then(function (r) {
        if (r.status === 202) {
          say("A test notification of " + rule + " is on its way to " + r.body.destinations.join(", ") +
              ". Reload the page to see how its delivery went.");
        } else {
          say("The test of " + rule + " was not sent: " + ((r.body && r.body.error) || ("HTTP " + r.status)));
        }
      }, function () { say("The test of " + rule + " was not sent: the server did not answer."); })
      .then(function () { button.disabled = false; });
  }

  doc.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-test-rule]");
    if (button) test(button);
  });
})(typeof window !== "undefined" ? window : globalThis);
