/*
 * A line's structured fields on the pages (issue 23): the fields one line unfolds to, the
 * link of its trace, and the attribute filters a view holds (its chips, its address).
 * Attribute keys and values are untrusted text: they reach the DOM only as text nodes and
 * a trace id only URL-encoded into an http(s) template. `QuaeroAttrs`; needs log-query.js.
 * Pure: valueText, hasFields, fieldsOf, traceLink, filtersFromQuery, queryWithFilters,
 * addAttr, setTrace, removeFilter, chipsOf. DOM: renderFields, withAttrFilters (a mixin for
 * the page components).
 */
(function (root, factory) {
  "use strict";
  var api = factory(root, root.QuaeroQuery || require("./log-query.js"));
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.QuaeroAttrs = api;
})(typeof window !== "undefined" ? window : globalThis, function (root, B) {
  "use strict";

  var MAX_FILTERS = 20;
  var MAX_KEY = 128;
  var HEX32 = /^[0-9a-f]{32}$/;

  // --- a line's fields -----------------------------------------------------------------

  /** An attribute value as text, as the server compares it: `true`, `500`, the string. */
  function valueText(v) {
    if (typeof v === "string") return v;
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v === "number") return String(v);
    return v === null || v === undefined ? "" : JSON.stringify(v);
  }

  /** Whether `line` has anything to unfold (cheap: it runs for every line rendered). */
  function hasFields(line) {
    if (!line) return false;
    if (line.trace_id || line.span_id) return true;
    var attrs = line.attributes;
    if (attrs && typeof attrs === "object") for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) return true;
    return false;
  }

  /** What `line` unfolds to: its attributes in the order sent, then its trace and span
   * ids; each `{kind: "attr" | "trace" | "span", key, value}`, the value as text. */
  function fieldsOf(line) {
    var out = [];
    var attrs = line && line.attributes;
    if (attrs && typeof attrs === "object") {
      Object.keys(attrs).forEach(function (key) {
        out.push({ kind: "attr", key: key, value: valueText(attrs[key]) });
      });
    }
    if (line && line.trace_id) out.push({ kind: "trace", key: "trace_id", value: String(line.trace_id) });
    if (line && line.span_id) out.push({ kind: "span", key: "span_id", value: String(line.span_id) });
    return out;
  }

  /**
   * The address of a trace from QUAERO_TRACE_URL's template (`https://…/{trace_id}`), or
   * null: only an http(s) template and a trace id of 32 hex digits (URL-encoded all the
   * same), so that no value sent with a line can make a `javascript:` link.
   */
  function traceLink(template, traceId) {
    template = template ? String(template) : "";
    var id = traceId ? String(traceId).toLowerCase() : "";
    if (!/^https?:\/\/[^\s]/i.test(template) || template.indexOf("{trace_id}") < 0 || !HEX32.test(id)) return null;
    var href = template.split("{trace_id}").join(encodeURIComponent(id));
    try {
      var protocol = new URL(href).protocol;
      if (protocol !== "http:" && protocol !== "https:") return null;
    } catch (e) {
      return null;
    }
    return href;
  }

  // --- a view's filters: {attrs: [[key, value], ...], traceId: ""} -------------------------

  function noFilters() { return { attrs: [], traceId: "" }; }

  /** `[key, value]` pairs the server takes: good keys, each pair once, at most MAX_FILTERS. */
  function safePairs(pairs) {
    var out = [];
    pairs.forEach(function (p) {
      if (out.length >= MAX_FILTERS || !p[0].length || p[0].length > MAX_KEY) return;
      if (!out.some(function (q) { return q[0] === p[0] && q[1] === p[1]; })) out.push([p[0], p[1]]);
    });
    return out;
  }

  /**
   * A view's filters from a query string: `PREFIXattr.KEY=VALUE` (repeatable) and
   * `PREFIXtrace_id=HEX` (the service panel's prefix is `svc.`, so that it and the page
   * keep their own). What is no good is left out: a shared address never breaks a page.
   */
  function filtersFromQuery(search, prefix) {
    prefix = prefix || "";
    var attrName = prefix + "attr.";
    var out = noFilters();
    var pairs = [];
    new URLSearchParams(search || "").forEach(function (value, name) {
      if (name.indexOf(attrName) === 0) pairs.push([name.slice(attrName.length), value]);
      else if (name === prefix + "trace_id") {
        try { out.traceId = B.traceIdOf(value) || ""; } catch (e) { /* not an id: ignored */ }
      }
    });
    out.attrs = safePairs(pairs);
    return out;
  }

  /** The query string `search` with `filters` in place of the ones (of `prefix`) it held;
   * every other parameter kept, in order. */
  function queryWithFilters(search, filters, prefix) {
    prefix = prefix || "";
    var attrName = prefix + "attr.";
    var out = new URLSearchParams();
    new URLSearchParams(search || "").forEach(function (value, name) {
      if (name.indexOf(attrName) !== 0 && name !== prefix + "trace_id") out.append(name, value);
    });
    B.attrPairs(filters.attrs).forEach(function (p) { out.append(attrName + p[0], p[1]); });
    if (filters.traceId) out.append(prefix + "trace_id", filters.traceId);
    return out.toString();
  }

  /** `filters` and `key = value` (each filter once; no more than the server takes). */
  function addAttr(filters, key, value) {
    var pairs = safePairs(filters.attrs.concat([[String(key), valueText(value)]]));
    return { attrs: pairs, traceId: filters.traceId || "" };
  }

  function setTrace(filters, traceId) {
    var id = "";
    try { id = B.traceIdOf(traceId) || ""; } catch (e) { id = filters.traceId || ""; }
    return { attrs: filters.attrs.slice(), traceId: id };
  }

  /** The chips that show the filters, each `{id, kind, key, value, label}`. */
  function chipsOf(filters) {
    var chips = filters.attrs.map(function (p) {
      return { id: "attr:" + JSON.stringify(p), kind: "attr", key: p[0], value: p[1], label: p[0] + "=" + p[1] };
    });
    if (filters.traceId) {
      chips.push({ id: "trace", kind: "trace", key: "trace_id", value: filters.traceId,
        label: "trace_id=" + filters.traceId });
    }
    return chips;
  }

  function removeFilter(filters, chip) {
    if (chip.kind === "trace") return { attrs: filters.attrs.slice(), traceId: "" };
    return { attrs: filters.attrs.filter(function (p) { return !(p[0] === chip.key && p[1] === chip.value); }),
      traceId: filters.traceId || "" };
  }

  // --- DOM -----------------------------------------------------------------------------

  /** QUAERO_TRACE_URL as the page was given it (a meta tag), or "". */
  function traceTemplate() {
    var doc = root.document;
    var meta = doc && doc.querySelector('meta[name="quaero-trace-url"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  function el(doc, tag, cls, text) {
    var node = doc.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /**
   * The unfolded fields of `line`: a row per field, `key = value`. With
   * `options.onFilter(field)` a value is a button that filters the view by it (not the
   * span id); a trace id links to its trace when `options.traceUrl` (the template) is set.
   * Built only for the line opened, never for every line.
   */
  function renderFields(doc, line, options) {
    options = options || {};
    var box = el(doc, "div", "ql-fields");
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Fields of line " + (line.line_number || line.id));
    fieldsOf(line).forEach(function (field) {
      var row = el(doc, "div", "ql-field ql-field-" + field.kind);
      row.appendChild(el(doc, "span", "ql-field-key", field.key));
      row.appendChild(el(doc, "span", "ql-field-eq", "="));
      var value;
      if (options.onFilter && field.kind !== "span") {
        value = el(doc, "button", "ql-field-val", field.value);
        value.type = "button";
        value.title = "Show only the lines with " + field.key + "=" + field.value;
        value.addEventListener("click", function () { options.onFilter(field); });
      } else {
        value = el(doc, "span", "ql-field-val", field.value);
      }
      row.appendChild(value);
      var href = field.kind === "trace" ? traceLink(options.traceUrl, field.value) : null;
      if (href) {
        var a = el(doc, "a", "ql-trace-link", "open trace");
        a.href = href;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        a.title = "Open this trace";
        row.appendChild(a);
      }
      box.appendChild(row);
    });
    return box;
  }

  /**
   * Attribute filters for a page component `data`: `filters`, `chips()`, `filterBy(field)`
   * (a field of an unfolded line), `removeChip(chip)`, `clearFilters()`. The filters live in
   * the page's address under `options.prefix`, read by `readFilters()` (from `init`), and
   * each change calls `options.changed.call(component)` (reconnect, search again).
   */
  function withAttrFilters(data, options) {
    var prefix = options.prefix || "";
    // The component as its `init` saw it. A chip's or a result's @click calls with `this`
    // bound to that element's scope, whose $refs are gone once the element is: the work
    // a change starts (a stream's callbacks) must hold the component's own.
    var owner = null;
    Object.assign(data, {
      filters: noFilters(),
      traceUrl: traceTemplate(),
      chips: function () { return chipsOf(this.filters); },
      hasFilters: function () { return this.filters.attrs.length > 0 || !!this.filters.traceId; },
      readFilters: function () {
        owner = this;
        this.filters = filtersFromQuery(root.location ? root.location.search : "", prefix);
      },
      setFilters: function (filters) {
        var self = owner || this;
        self.filters = filters;
        if (root.history && root.location) {
          var query = queryWithFilters(root.location.search, filters, prefix);
          root.history.replaceState(root.history.state, "",
            root.location.pathname + (query ? "?" + query : "") + root.location.hash);
        }
        options.changed.call(self);
      },
      filterBy: function (field) {
        if (field.kind === "trace") this.setFilters(setTrace(this.filters, field.value));
        else if (field.kind === "attr") this.setFilters(addAttr(this.filters, field.key, field.value));
      },
      removeChip: function (chip) { this.setFilters(removeFilter(this.filters, chip)); },
      clearFilters: function () { this.setFilters(noFilters()); }
    });
    return data;
  }

  return {
    MAX_FILTERS: MAX_FILTERS,
    valueText: valueText,
    hasFields: hasFields,
    fieldsOf: fieldsOf,
    traceLink: traceLink,
    noFilters: noFilters,
    filtersFromQuery: filtersFromQuery,
    queryWithFilters: queryWithFilters,
    addAttr: addAttr,
    setTrace: setTrace,
    removeFilter: removeFilter,
    chipsOf: chipsOf,
    traceTemplate: traceTemplate,
    renderFields: renderFields,
    withAttrFilters: withAttrFilters
  };
});
