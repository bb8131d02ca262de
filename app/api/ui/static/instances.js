/* /ui/instances: the organization's instances with their per-resource polling state and a
 * badge for failed deliveries; refreshes itself every few seconds while the tab is visible.
 *
 * One request per refresh: the console's own GET /ui/api/instances answers the page of SPEC
 * instances with each one's `polling` (as GET …/polling) and `failedDeliveries` count.
 */
"use strict";

(function () {
  const { $, api, el, clear, date, badge, table, notify, errorText, CONSOLE_API } = window.PC;
  const PAGE_SIZE = 25;

  window.PC.setupNav("instances");
  if (!window.PC.requireAuth()) {
    return;
  }
  const notice = window.PC.takeNotice();
  if (notice) {
    notify("success", notice);
  }

  const params = new URLSearchParams(window.location.search);
  let page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);

  function pollingCell(state) {
    if (!state.length) {
      return el("span", { class: "muted" }, "no resources");
    }
    return el(
      "div",
      { class: "table-wrap" },
      el(
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
      )
    );
  }

  function failedBadge(instance, failed) {
    if (!failed) {
      return null;
    }
    return el(
      "a",
      {
        class: "badge bad failed-deliveries",
        href: "/ui/instance?id=" + encodeURIComponent(instance.id) + "#deliveries-heading",
        title: "Deliveries that exhausted their retries; open the instance to retry them",
      },
      failed + (failed === 1 ? " failed delivery" : " failed deliveries")
    );
  }

  function statusCell(instance, failed) {
    return [
      instance.eventsEnabled ? badge("events on", "ok") : badge("events off", "off"),
      " ",
      instance.disabled ? badge("disabled", "bad") : null,
      instance.valid ? null : badge("invalid", "bad"),
      " ",
      failedBadge(instance, failed),
    ];
  }

  let shown = null; // the data on screen, as JSON: an unchanged refresh leaves the page alone
  let listFailed = false;

  async function load(manual) {
    if (manual) {
      notify("info", "");
    }
    $("loading").hidden = shown !== null;
    let result;
    try {
      result = await api("GET", "/instances", {
        base: CONSOLE_API,
        query: { page: page, pageSize: PAGE_SIZE },
      });
    } catch (err) {
      $("loading").hidden = true;
      listFailed = true;
      notify("error", "Could not list instances: " + errorText(err));
      return;
    }
    if (listFailed) {
      listFailed = false;
      notify("info", "");
    }
    const instances = result.data || [];
    $("loading").hidden = true;
    const key = JSON.stringify([page, result.total, instances]);
    if (key === shown) {
      return;
    }
    shown = key;
    const rows = instances.map((instance) => ({
      instance: instance,
      state: instance.polling,
      failed: instance.failedDeliveries,
    }));
    const columns = [
      { label: "ID", class: "num", render: (r) => String(r.instance.id) },
      {
        label: "Name",
        render: (r) =>
          el("a", { href: "/ui/instance?id=" + encodeURIComponent(r.instance.id) }, r.instance.name),
      },
      { label: "Status", render: (r) => statusCell(r.instance, r.failed) },
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
    load(true);
  }

  $("prev-page").addEventListener("click", () => go(page - 1));
  $("next-page").addEventListener("click", () => go(page + 1));
  $("refresh").addEventListener("click", () => load(true));
  load(false);
  window.PC.liveRefresh(() => load(false), $("live-status"));
})();
