/* /ui/instance?id=N: polling state, recent events and deliveries; poll now; retry. */
"use strict";

(function () {
  const { $, api, el, clear, date, badge, statusBadge, table, notify, errorText } = window.PC;
  const RECENT = 50;

  window.PC.setupNav("instances");
  if (!window.PC.requireAuth()) {
    return;
  }

  const rawId = new URLSearchParams(window.location.search).get("id") || "";
  if (!/^[0-9]+$/.test(rawId)) {
    notify("error", "id: this page needs ?id=<instance id>.");
    ["polling", "events", "deliveries"].forEach((id) => clear($(id)));
    return;
  }
  const id = rawId;
  const base = "/instances/" + id;

  function section(id, node) {
    clear($(id)).appendChild(node);
  }

  function failed(id, what, err) {
    section(id, el("p", { class: "error-text" }, "Could not load " + what + ": " + errorText(err)));
  }

  function summary(instance) {
    const config = instance.configuration || {};
    const resources = Object.keys(config["event.poller.configuration"] || {});
    document.title = instance.name + " · Pollinator";
    $("title").textContent = instance.name + " (#" + instance.id + ")";
    const rows = [
      ["Element", instance.element ? instance.element.name + " (" + instance.element.key + ")" : ""],
      [
        "Status",
        [
          instance.eventsEnabled ? badge("events on", "ok") : badge("events off", "off"),
          " ",
          instance.valid ? badge("valid", "ok") : badge("invalid", "bad"),
          " ",
          instance.disabled ? badge("disabled", "bad") : null,
        ],
      ],
      ["Callback URL", config["event.notification.callback.url"] || "—"],
      ["Refresh interval", config["event.poller.refresh_interval"] + " min"],
      ["Resources", resources.length ? resources.join(", ") : "Keap defaults"],
      ["Tags", (instance.tags || []).map((t) => t.name).join(", ") || "—"],
      ["Created", date(instance.createdDate)],
      ["Updated", date(instance.updatedDate)],
    ];
    const dl = clear($("summary"));
    rows.forEach(([k, v]) => {
      dl.appendChild(el("dt", {}, k));
      dl.appendChild(el("dd", {}, v));
    });
    $("summary-panel").hidden = false;
    $("poll-now").disabled = !instance.eventsEnabled;
    $("poll-now").title = instance.eventsEnabled ? "" : "Events are not enabled";
  }

  function pollingTable(states) {
    return table(
      [
        { label: "Resource", render: (s) => s.resource },
        { label: "Watermark", render: (s) => date(s.watermark) },
        { label: "Last polled", render: (s) => date(s.lastPolledAt) },
        { label: "Last success", render: (s) => date(s.lastSuccessAt) },
        { label: "Next poll", render: (s) => date(s.nextPollAt) },
        {
          label: "Failures",
          class: "num",
          render: (s) =>
            el("span", { class: s.consecutiveFailures > 0 ? "bad" : "" }, String(s.consecutiveFailures)),
        },
        { label: "Last error", render: (s) => el("span", { class: "error-text" }, s.lastError || "") },
      ],
      states,
      "No resources are polled."
    );
  }

  function eventsTable(events, total) {
    const node = table(
      [
        { label: "Date", render: (e) => date(e.date) },
        { label: "Type", render: (e) => e.eventType },
        { label: "Object", render: (e) => e.objectType },
        { label: "Object ID", render: (e) => el("span", { class: "mono" }, String(e.objectId)) },
        { label: "Delivery", render: (e) => statusBadge(e.deliveryStatus) },
        { label: "Recorded", render: (e) => date(e.createdDate) },
      ],
      events,
      "No events yet."
    );
    return [node, countNote(events.length, total, "events")];
  }

  function countNote(shown, total, what) {
    if (total !== null && total > shown) {
      return el("p", { class: "muted small" }, "Showing the newest " + shown + " of " + total + " " + what + ".");
    }
    return null;
  }

  function attemptsList(attempts) {
    if (!attempts.length) {
      return el("span", { class: "muted" }, "none yet");
    }
    return el(
      "ol",
      { class: "attempts" },
      attempts.map((a) =>
        el(
          "li",
          { value: a.attempt },
          date(a.at),
          " → ",
          a.statusCode === null || a.statusCode === undefined
            ? el("span", { class: "bad" }, "no response")
            : el("span", { class: a.statusCode < 300 ? "ok" : "bad" }, "HTTP " + a.statusCode),
          a.durationMs === null || a.durationMs === undefined ? "" : " in " + a.durationMs + " ms",
          a.error ? el("div", { class: "error-text" }, a.error) : null,
          a.responseBody
            ? el("details", {}, el("summary", {}, "response body"), el("pre", {}, a.responseBody))
            : null
        )
      )
    );
  }

  function retryButton(delivery) {
    if (delivery.status !== "failed") {
      return null;
    }
    return el(
      "button",
      {
        type: "button",
        class: "small",
        "aria-label": "Retry delivery " + delivery.id,
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            await api("POST", base + "/deliveries/" + encodeURIComponent(delivery.id) + "/retry");
            notify("success", "Delivery " + delivery.id + " queued for another attempt.");
            loadDeliveries();
            loadEvents();
          } catch (err) {
            notify("error", "Retry failed: " + errorText(err));
            event.target.disabled = false;
          }
        },
      },
      "Retry"
    );
  }

  function deliveriesTable(deliveries, total) {
    const node = table(
      [
        { label: "Delivery", render: (d) => el("span", { class: "mono", title: d.id }, d.id.slice(0, 8)) },
        { label: "Status", render: (d) => statusBadge(d.status) },
        { label: "Events", class: "num", render: (d) => String(d.eventCount) },
        { label: "Created", render: (d) => date(d.createdDate) },
        { label: "Delivered", render: (d) => date(d.deliveredDate) },
        { label: "Next attempt", render: (d) => date(d.nextAttemptAt) },
        { label: "Attempts", render: (d) => attemptsList(d.attempts || []) },
        { label: "", render: retryButton },
      ],
      deliveries,
      "No deliveries yet."
    );
    return [node, countNote(deliveries.length, total, "deliveries")];
  }

  async function loadInstance() {
    try {
      summary((await api("GET", base)).data);
      return true;
    } catch (err) {
      notify("error", "Could not load instance " + id + ": " + errorText(err));
      $("poll-now").disabled = true;
      ["polling", "events", "deliveries"].forEach((s) => clear($(s)));
      return false;
    }
  }

  async function loadPolling() {
    try {
      section("polling", pollingTable((await api("GET", base + "/polling")).data));
    } catch (err) {
      failed("polling", "the polling state", err);
    }
  }

  async function loadEvents() {
    try {
      const r = await api("GET", base + "/events", { query: { pageSize: RECENT } });
      const div = el("div", {}, eventsTable(r.data, r.total));
      section("events", div);
    } catch (err) {
      failed("events", "events", err);
    }
  }

  async function loadDeliveries() {
    try {
      const status = $("delivery-status").value;
      const r = await api("GET", base + "/deliveries", { query: { pageSize: RECENT, status: status } });
      section("deliveries", el("div", {}, deliveriesTable(r.data, r.total)));
    } catch (err) {
      failed("deliveries", "deliveries", err);
    }
  }

  async function loadAll() {
    if (await loadInstance()) {
      await Promise.all([loadPolling(), loadEvents(), loadDeliveries()]);
    }
  }

  $("refresh").addEventListener("click", () => {
    notify("info", "");
    loadAll();
  });
  $("delivery-status").addEventListener("change", loadDeliveries);
  $("poll-now").addEventListener("click", async () => {
    const button = $("poll-now");
    button.disabled = true;
    try {
      await api("POST", base + "/polling/run");
      notify("success", "Poll scheduled: the scheduler picks it up within a few seconds.");
      setTimeout(loadAll, 3000);
    } catch (err) {
      notify("error", "Poll now failed: " + errorText(err));
    } finally {
      button.disabled = false;
    }
  });
  $("retry-failed").addEventListener("click", async () => {
    try {
      const r = await api("POST", base + "/deliveries/retry", { query: { status: "failed" } });
      notify("success", r.data.count + " failed deliveries queued for another attempt.");
      loadDeliveries();
    } catch (err) {
      notify("error", "Retry failed: " + errorText(err));
    }
  });

  loadAll();
})();
