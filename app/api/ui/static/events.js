/* /ui/events: the organization-wide event log (GET /events) with filters by instance,
 * object type, event type and date; each event with its raw record. The filters live in the
 * address (?instanceId=&objectType=&eventType=&since=&page=), so a filtered view can be
 * bookmarked or linked from an instance page. Refreshes itself while the tab is visible.
 */
"use strict";

(function () {
  const { $, api, el, clear, date, statusBadge, table, notify, errorText, jsonDetails } = window.PC;
  const PAGE_SIZE = 50;
  const FILTERS = {
    instanceId: "filter-instance",
    objectType: "filter-object-type",
    eventType: "filter-event-type",
    since: "filter-since",
  };

  window.PC.setupNav("events");
  if (!window.PC.requireAuth()) {
    return;
  }

  const params = new URLSearchParams(window.location.search);
  let page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
  const names = new Map(); // instance id -> name
  const openJson = new Set();
  let shown = null;
  let applied = {}; // the filters of the view (edits in the form apply on "Apply" only)

  /** datetime-local holds a UTC wall time here ("2026-12-01T08:00[:00]"); the API wants ISO. */
  function sinceToIso(value) {
    if (!value) {
      return "";
    }
    return (value.length === 16 ? value + ":00" : value) + "Z";
  }

  function isoToSince(value) {
    const match = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?)/.exec(value || "");
    return match ? match[1] : "";
  }

  function readFilters() {
    return {
      instanceId: $(FILTERS.instanceId).value,
      objectType: $(FILTERS.objectType).value.trim(),
      eventType: $(FILTERS.eventType).value,
      since: sinceToIso($(FILTERS.since).value),
    };
  }

  function writeAddress(filters) {
    const q = new URLSearchParams();
    Object.entries(filters).forEach(([k, v]) => v && q.set(k, v));
    if (page > 1) {
      q.set("page", String(page));
    }
    const qs = q.toString();
    history.replaceState(null, "", window.location.pathname + (qs ? "?" + qs : ""));
  }

  function instanceCell(e) {
    const name = names.get(String(e.instanceId));
    return el(
      "a",
      { href: "/ui/instance?id=" + encodeURIComponent(e.instanceId) },
      (name ? name + " " : "") + "#" + e.instanceId
    );
  }

  async function load(manual) {
    const filters = applied;
    if (manual) {
      notify("info", "");
      window.PC.clearMarks();
    }
    let r;
    try {
      r = await api("GET", "/events", {
        query: Object.assign({ page: page, pageSize: PAGE_SIZE }, filters),
      });
    } catch (err) {
      shown = null;
      notify("error", "Could not load the event log: " + errorText(err));
      window.PC.markField(err.message || "");
      clear($("events"));
      return;
    }
    const key = JSON.stringify([filters, page, r.data, r.total]);
    if (key === shown) {
      return;
    }
    shown = key;
    const node = table(
      [
        { label: "Date", render: (e) => date(e.date) },
        { label: "Instance", render: instanceCell },
        { label: "Type", render: (e) => e.eventType },
        { label: "Object", render: (e) => e.objectType },
        { label: "Object ID", render: (e) => el("span", { class: "mono" }, String(e.objectId)) },
        { label: "Delivery", render: (e) => statusBadge(e.deliveryStatus) },
        { label: "Recorded", render: (e) => date(e.createdDate) },
        { label: "Raw", render: (e) => jsonDetails("raw record", e.raw, e.eventId, openJson) },
      ],
      r.data,
      "No events match."
    );
    clear($("events")).appendChild(node);
    const total = r.total === null ? r.data.length : r.total;
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    $("pager").hidden = pages <= 1;
    $("page-info").textContent = "Page " + page + " of " + pages + " (" + total + " events)";
    $("prev-page").disabled = page <= 1;
    $("next-page").disabled = page >= pages;
  }

  async function loadInstances() {
    // Names for the instance filter and the Instance column (the first 500 instances).
    try {
      const r = await api("GET", "/instances", { query: { pageSize: 500 } });
      const select = $(FILTERS.instanceId);
      r.data.forEach((i) => {
        names.set(String(i.id), i.name);
        select.appendChild(el("option", { value: String(i.id) }, i.name + " (#" + i.id + ")"));
      });
    } catch (err) {
      notify("error", "Could not list instances: " + errorText(err));
    }
  }

  async function loadObjectTypes() {
    try {
      const defaults = await window.PC.defaults();
      const list = $("object-types");
      Object.keys(defaults["event.poller.configuration"] || {}).forEach((name) =>
        list.appendChild(el("option", { value: name }))
      );
    } catch (err) {
      // Only suggestions: the field takes any object type.
    }
  }

  /** Shows page `to`; `apply` takes the form's filters first (else the view's stay). */
  function go(to, apply) {
    page = to;
    if (apply) {
      applied = readFilters();
    }
    writeAddress(applied);
    load(true);
  }

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    go(1, true);
  });
  $("reset-filters").addEventListener("click", () => {
    Object.values(FILTERS).forEach((id) => ($(id).value = ""));
    go(1, true);
  });
  $("prev-page").addEventListener("click", () => go(page - 1));
  $("next-page").addEventListener("click", () => go(page + 1));
  $("refresh").addEventListener("click", () => load(true));

  (async () => {
    await Promise.all([loadInstances(), loadObjectTypes()]);
    const wanted = params.get("instanceId") || "";
    if (wanted && !names.has(wanted)) {
      // Not among the listed instances: keep it as a filter (the API says if it is unknown).
      $(FILTERS.instanceId).appendChild(el("option", { value: wanted }, "#" + wanted));
    }
    $(FILTERS.instanceId).value = wanted;
    $(FILTERS.objectType).value = params.get("objectType") || "";
    $(FILTERS.eventType).value = (params.get("eventType") || "").toUpperCase();
    $(FILTERS.since).value = isoToSince(params.get("since"));
    applied = readFilters();
    await load(false);
    window.PC.liveRefresh(() => load(false), $("live-status"));
  })();
})();
