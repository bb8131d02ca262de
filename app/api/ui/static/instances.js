/* /ui/instances: the organization's instances with their per-resource polling state. */
"use strict";

(function () {
  const { $, api, el, clear, date, badge, table, notify, errorText } = window.PC;
  const PAGE_SIZE = 25;

  window.PC.setupNav("instances");
  if (!window.PC.requireAuth()) {
    return;
  }

  const params = new URLSearchParams(window.location.search);
  let page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);

  function pollingCell(state) {
    if (state instanceof Error) {
      return el("span", { class: "error-text" }, errorText(state));
    }
    if (!state.length) {
      return el("span", { class: "muted" }, "no resources");
    }
    return el(
      "table",
      { class: "inner" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          el("th", { scope: "col" }, "Resource"),
          el("th", { scope: "col" }, "Last success"),
          el("th", { scope: "col" }, "Failures"),
          el("th", { scope: "col" }, "Last error")
        )
      ),
      el(
        "tbody",
        {},
        state.map((s) =>
          el(
            "tr",
            {},
            el("td", {}, s.resource),
            el("td", {}, date(s.lastSuccessAt)),
            el(
              "td",
              { class: "num " + (s.consecutiveFailures > 0 ? "bad" : "") },
              String(s.consecutiveFailures)
            ),
            el("td", { class: "error-text" }, s.lastError || "")
          )
        )
      )
    );
  }

  function statusCell(instance) {
    return [
      instance.eventsEnabled ? badge("events on", "ok") : badge("events off", "off"),
      " ",
      instance.disabled ? badge("disabled", "bad") : null,
      instance.valid ? null : badge("invalid", "bad"),
    ];
  }

  async function load() {
    notify("info", "");
    $("loading").hidden = false;
    let result;
    try {
      result = await api("GET", "/instances", { query: { page: page, pageSize: PAGE_SIZE } });
    } catch (err) {
      $("loading").hidden = true;
      notify("error", "Could not list instances: " + errorText(err));
      return;
    }
    const instances = result.data || [];
    const states = await Promise.all(
      instances.map((i) =>
        api("GET", "/instances/" + i.id + "/polling").then(
          (r) => r.data,
          (err) => err
        )
      )
    );
    $("loading").hidden = true;
    const rows = instances.map((instance, n) => ({ instance: instance, state: states[n] }));
    const columns = [
      { label: "ID", class: "num", render: (r) => String(r.instance.id) },
      {
        label: "Name",
        render: (r) =>
          el("a", { href: "/ui/instance?id=" + encodeURIComponent(r.instance.id) }, r.instance.name),
      },
      { label: "Status", render: (r) => statusCell(r.instance) },
      { label: "Tags", render: (r) => (r.instance.tags || []).map((t) => t.name).join(", ") },
      { label: "Created", render: (r) => date(r.instance.createdDate) },
      { label: "Polling state", render: (r) => pollingCell(r.state) },
    ];
    const container = clear($("instances"));
    container.appendChild(
      table(columns, rows, "No instances yet. Create one with “New instance”.")
    );
    const total = result.total === null ? instances.length : result.total;
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    $("pager").hidden = pages <= 1;
    $("page-info").textContent = "Page " + page + " of " + pages + " (" + total + " instances)";
    $("prev-page").disabled = page <= 1;
    $("next-page").disabled = page >= pages;
  }

  function go(to) {
    page = to;
    history.replaceState(null, "", to > 1 ? "?page=" + to : window.location.pathname);
    load();
  }

  $("prev-page").addEventListener("click", () => go(page - 1));
  $("next-page").addEventListener("click", () => go(page + 1));
  $("refresh").addEventListener("click", load);
  load();
})();
