/*
 * Folding: a `::group::name` line (the convention of GitHub Actions and GitLab) opens a
 * section that ends at `::endgroup::`; the section folds under its first line, which
 * becomes a button. A group stays open while its lines arrive and folds when it ends,
 * unless the reader opened or closed it. `QuaeroGroups`; needs log-format.js. Pure:
 * groupMarker.
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroFormat || require("./log-format.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroGroups = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, F) {
  "use strict";

  var START = /^\s*::group::(.*)$/;
  var END = /^\s*::endgroup::\s*$/;

  /** `{start: name}`, `{end: true}` or null for a message. Pure. */
  function groupMarker(message) {
    var text = F.stripAnsi(String(message || ""));
    var m = START.exec(text);
    if (m) return { start: m[1].trim() || "group" };
    return END.test(text) ? { end: true } : null;
  }

  /** Keeps the groups of a LogView: give `folder.added` as the view's `onAdded`. */
  function GroupFolder() {
    this.current = new Map();   // container element -> its open group
  }

  GroupFolder.prototype.setFolded = function (g, folded) {
    g.folded = folded;
    g.button.setAttribute("aria-expanded", folded ? "false" : "true");
    g.members.forEach(function (rec) { rec.el.classList.toggle("ql-folded", folded); });
  };

  GroupFolder.prototype.toggle = function (g) {
    g.touched = true;
    this.setFolded(g, !g.folded);
  };

  /** Open the group of `rec` (a search match or a permalink inside a folded group). */
  GroupFolder.prototype.reveal = function (rec) {
    if (rec && rec.group && rec.group.folded) this.setFolded(rec.group, false);
  };

  GroupFolder.prototype.open = function (rec, name) {
    var self = this;
    var doc = root.document;
    var msg = rec.el.lastChild;
    var button = doc.createElement("button");
    button.type = "button";
    button.className = "ql-fold";
    button.setAttribute("aria-expanded", "true");
    var caret = doc.createElement("span");
    caret.className = "caret";
    caret.setAttribute("aria-hidden", "true");
    var label = doc.createElement("span");
    label.textContent = name;       // text: messages are untrusted
    var count = doc.createElement("span");
    count.className = "ql-fold-count";
    button.appendChild(caret);
    button.appendChild(label);
    button.appendChild(count);
    msg.textContent = "";
    msg.appendChild(button);
    rec.el.classList.add("ql-group");
    var g = { head: rec, button: button, count: count, members: [], folded: false, touched: false, ended: false };
    button.addEventListener("click", function () { self.toggle(g); });
    rec.groupHead = g;
    return g;
  };

  GroupFolder.prototype.close = function (g) {
    g.ended = true;
    g.count.textContent = g.members.length + (g.members.length === 1 ? " line" : " lines");
    if (!g.touched) this.setFolded(g, true);
  };

  /** New records (in id order; `prepended`: older lines, which restart the grouping). */
  GroupFolder.prototype.added = function (recs, prepended, view) {
    if (prepended) { this.regroup(view.records); return; }
    var self = this;
    recs.forEach(function (rec) { self.one(rec); });
  };

  GroupFolder.prototype.one = function (rec) {
    var container = rec.el.parentNode;
    var g = this.current.get(container);
    if (g && g.head.gone) { g = null; this.current.delete(container); }
    var mark = groupMarker(rec.line.message);
    if (mark && mark.start !== undefined) {
      if (g) this.close(g);
      this.current.set(container, this.open(rec, mark.start));
      return;
    }
    if (mark && mark.end) {
      rec.el.classList.add("ql-endgroup");
      if (g) { this.close(g); this.current.delete(container); }
      return;
    }
    if (g) {
      rec.group = g;
      g.members.push(rec);
      if (g.folded) rec.el.classList.add("ql-folded");
    }
  };

  /** Group `records` from scratch (after older lines came in front). */
  GroupFolder.prototype.regroup = function (records) {
    var self = this;
    this.current = new Map();
    records.forEach(function (rec) {
      rec.group = null;
      rec.el.classList.remove("ql-folded");
      if (rec.groupHead) {
        rec.el.classList.remove("ql-group");
        rec.el.lastChild.textContent = rec.line.message;
        rec.groupHead = null;
      }
      self.one(rec);
    });
  };

  return { groupMarker: groupMarker, GroupFolder: GroupFolder };
});
