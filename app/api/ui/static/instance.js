/* /ui/instance?id=N: the instance's settings, polling state, recent events (with their raw
 * records) and deliveries (with their bodies); edit, events on/off, poll now, retry, delete.
 * Refreshes itself every few seconds while the tab is visible.
 */
"use strict";

(function () {
  const { $, api, el, clear, date, badge, statusBadge, table, notify, errorText, jsonDetails } =
    window.PC;
  const RECENT = 50;
  const SECRET = "********";

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

  // What each section shows, as JSON: a live refresh that finds the same data leaves the
  // section alone (no flicker, selections and scroll positions kept).
  const shownData = {};
  const openJson = new Set();
  let current = null; // the instance as last read

  function section(id, node, data) {
    if (data !== undefined) {
      const key = JSON.stringify(data);
      if (shownData[id] === key) {
        return;
      }
      shownData[id] = key;
    } else {
      delete shownData[id];
    }
    clear($(id)).appendChild(node);
  }

  function failed(id, what, err) {
    section(id, el("p", { class: "error-text" }, "Could not load " + what + ": " + errorText(err)));
  }

  function summary(instance) {
    current = instance;
    const config = instance.configuration || {};
    const resources = Object.keys(config["event.poller.configuration"] || {});
    const toggle = $("toggle-events");
    toggle.disabled = false;
    toggle.textContent = instance.eventsEnabled ? "Turn events off" : "Turn events on";
    $("edit").disabled = !$("edit-section").hidden; // a refresh never resets an open form
    $("delete").disabled = false;
    $("delete-name").textContent = instance.name;
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
      ["Signature key", config["event.notification.signature.key"] ? "set (" + SECRET + ")" : "none"],
      ["Resources", resources.length ? resources.join(", ") : "none"],
      ["OAuth client ID", config["oauth.api.key"] || "—"],
      ["Tags", (instance.tags || []).map((t) => t.name).join(", ") || "—"],
      ["Created", date(instance.createdDate)],
      ["Updated", date(instance.updatedDate)],
    ];
    const dl = el("dl", { class: "summary", id: "summary" });
    rows.forEach(([k, v]) => {
      dl.appendChild(el("dt", {}, k));
      dl.appendChild(el("dd", {}, v));
    });
    section("summary-panel", dl, instance);
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
        {
          label: "Raw",
          render: (e) => jsonDetails("raw record", e.raw, "event-" + e.eventId, openJson),
        },
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
        class: "small retry",
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
        { label: "Status", render: (d) => [statusBadge(d.status), " ", retryButton(d)] },
        { label: "Events", class: "num", render: (d) => String(d.eventCount) },
        { label: "Created", render: (d) => date(d.createdDate) },
        { label: "Delivered", render: (d) => date(d.deliveredDate) },
        { label: "Next attempt", render: (d) => date(d.nextAttemptAt) },
        { label: "Attempts", render: (d) => attemptsList(d.attempts || []) },
        {
          label: "Body",
          render: (d) => jsonDetails("body", d.body, "delivery-" + d.id, openJson),
        },
      ],
      deliveries,
      "No deliveries yet."
    );
    return [node, countNote(deliveries.length, total, "deliveries")];
  }

  let gone = false; // deleted (here or elsewhere): nothing left to refresh

  async function loadInstance() {
    try {
      summary((await api("GET", base)).data);
      return true;
    } catch (err) {
      notify("error", "Could not load instance " + id + ": " + errorText(err));
      gone = err.status === 404;
      ["poll-now", "toggle-events", "edit", "delete"].forEach((b) => ($(b).disabled = true));
      ["polling", "events", "deliveries"].forEach((s) => section(s, el("span")));
      return false;
    }
  }

  async function loadPolling() {
    try {
      const states = (await api("GET", base + "/polling")).data;
      section("polling", pollingTable(states), states);
    } catch (err) {
      failed("polling", "the polling state", err);
    }
  }

  async function loadEvents() {
    try {
      const r = await api("GET", base + "/events", { query: { pageSize: RECENT } });
      section("events", el("div", {}, eventsTable(r.data, r.total)), [r.data, r.total]);
    } catch (err) {
      failed("events", "events", err);
    }
  }

  async function loadDeliveries() {
    try {
      const status = $("delivery-status").value;
      const r = await api("GET", base + "/deliveries", { query: { pageSize: RECENT, status: status } });
      section("deliveries", el("div", {}, deliveriesTable(r.data, r.total)), [status, r.data, r.total]);
    } catch (err) {
      failed("deliveries", "deliveries", err);
    }
  }

  async function loadAll() {
    if (gone) {
      return;
    }
    if (await loadInstance()) {
      await Promise.all([loadPolling(), loadEvents(), loadDeliveries()]);
    }
  }

  // --- edit ------------------------------------------------------------------------------

  let editor = null;
  let offered = {};

  async function openEditor() {
    $("edit").disabled = true;
    await defaultsLoaded;
    const config = current.configuration || {};
    $("edit-name").value = current.name;
    $("edit-tags").value = (current.tags || []).map((t) => t.name).join(", ");
    $("edit-events-enabled").checked = !!current.eventsEnabled;
    $("edit-callback").value = config["event.notification.callback.url"] || "";
    $("edit-interval").value = String(config["event.poller.refresh_interval"] ?? "");
    $("edit-signature").value = config["event.notification.signature.key"] || "";
    $("edit-api-key").value = config["oauth.api.key"] || "";
    $("edit-api-secret").value = config["oauth.api.secret"] || "";
    $("edit-oauth-callback").value = config["oauth.callback.url"] || "";
    const poller = config["event.poller.configuration"];
    editor = window.PC.resourceEditor(
      clear($("edit-resources")),
      poller && typeof poller === "object" ? poller : {},
      offered,
      "edit-resource"
    );
    window.PC.clearMarks();
    $("edit-section").hidden = false;
    $("edit").disabled = true;
    $("edit-name").focus();
  }

  function closeEditor() {
    $("edit-section").hidden = true;
    $("edit").disabled = false;
    editor = null;
  }

  /** A secret input: "" removes the key, anything else (******** keeps it) is sent as is. */
  function secretValue(inputId) {
    const value = $(inputId).value;
    return value === "" ? null : value;
  }

  function editBody() {
    const interval = $("edit-interval").value.trim();
    return {
      name: $("edit-name").value.trim(),
      tags: $("edit-tags").value.split(",").map((t) => t.trim()).filter((t) => t),
      configuration: {
        "oauth.api.key": $("edit-api-key").value.trim(),
        "oauth.api.secret": secretValue("edit-api-secret"),
        "oauth.callback.url": $("edit-oauth-callback").value.trim(),
        "event.notification.enabled": $("edit-events-enabled").checked,
        "event.notification.callback.url": $("edit-callback").value.trim() || null,
        "event.poller.refresh_interval": interval === "" || isNaN(Number(interval)) ? interval : Number(interval),
        "event.notification.signature.key": secretValue("edit-signature"),
        "event.poller.configuration": editor.value(),
      },
    };
  }

  async function save(event) {
    event.preventDefault();
    window.PC.clearMarks();
    if ($("edit-events-enabled").checked && !editor.selected()) {
      notify("error", "configuration.event.poller.configuration: pick at least one resource");
      return;
    }
    const button = $("save-button");
    button.disabled = true;
    notify("info", "Saving…");
    try {
      summary((await api("PATCH", base, { body: editBody() })).data);
      closeEditor();
      notify("success", "Saved. The changes apply from the next poll.");
      loadAll();
    } catch (err) {
      notify("error", "Not saved: " + errorText(err));
      window.PC.markField(err.message || "");
    } finally {
      button.disabled = false;
    }
  }

  function addResource() {
    const input = $("edit-new-resource");
    const problem = editor.add(input.value.trim());
    if (problem) {
      notify("error", problem);
      input.setAttribute("aria-invalid", "true");
      return;
    }
    input.removeAttribute("aria-invalid");
    input.value = "";
  }

  async function toggleEvents() {
    const on = !current.eventsEnabled;
    const button = $("toggle-events");
    button.disabled = true;
    try {
      const r = await api("PATCH", base, {
        body: { configuration: { "event.notification.enabled": on } },
      });
      summary(r.data);
      notify("success", on ? "Events are on: polling resumes." : "Events are off: polling stopped.");
      loadAll();
    } catch (err) {
      notify("error", "Could not turn events " + (on ? "on" : "off") + ": " + errorText(err));
    } finally {
      button.disabled = false;
    }
  }

  async function remove() {
    const button = $("delete-confirm");
    button.disabled = true;
    try {
      await api("DELETE", base);
      gone = true;
      $("delete-dialog").close();
      window.PC.setNotice("Instance " + current.name + " (#" + id + ") was deleted.");
      window.location.assign("/ui/instances");
    } catch (err) {
      $("delete-dialog").close();
      notify("error", "Could not delete: " + errorText(err));
      button.disabled = false;
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
  $("test-poll").addEventListener("click", async () => {
    const button = $("test-poll");
    button.disabled = true;
    try {
      const r = await api("POST", base + "/polling/test", { body: {} });
      const list = $("test-poll-summary");
      list.replaceChildren(
        ...r.data.resources.map((res) =>
          el(
            "li",
            {},
            res.resource + ": " +
              (res.error
                ? "failed — " + res.error
                : res.eventCount + " event(s) from " + res.records + " record(s)" +
                  (res.skippedCount ? ", " + res.skippedCount + " unreadable" : "")),
          ),
        ),
      );
      $("test-poll-result").textContent = JSON.stringify(r.data, null, 2);
      $("test-poll-section").hidden = false;
      notify("success", "Test poll done: nothing was stored or sent.");
    } catch (err) {
      notify("error", "Test poll failed: " + errorText(err));
    } finally {
      button.disabled = false;
    }
  });
  // Replay: re-send the deliveries created in a time range (a background job; each is
  // sent once, with its original webhook-id), then follow the job until it is done.
  $("replay-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const since = $("replay-since").value;
    const until = $("replay-until").value;
    if (!since || !until) {
      notify("error", "replay: choose both times.");
      return;
    }
    const out = $("replay-result");
    try {
      const r = await api("POST", base + "/deliveries/replay", {
        body: { since: since + "Z", until: until + "Z", status: $("replay-status").value },
      });
      const jobId = r.data.jobId;
      out.textContent = "Replay queued (job " + jobId + ")…";
      for (let i = 0; i < 60; i++) {
        const job = (await api("GET", base + "/deliveries/replay/" + encodeURIComponent(jobId))).data;
        out.textContent =
          "Replay " + job.status + ": " + job.sent + " of " + job.selected + " deliveries re-sent.";
        if (job.status === "done") {
          loadDeliveries();
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    } catch (err) {
      out.textContent = "";
      notify("error", "Replay failed: " + errorText(err));
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

  $("edit").addEventListener("click", openEditor);
  $("cancel-edit").addEventListener("click", closeEditor);
  $("edit-form").addEventListener("submit", save);
  $("edit-add-resource").addEventListener("click", addResource);
  $("edit-new-resource").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addResource();
    }
  });
  $("toggle-events").addEventListener("click", toggleEvents);
  $("delete").addEventListener("click", () => $("delete-dialog").showModal());
  $("delete-cancel").addEventListener("click", () => $("delete-dialog").close());
  $("delete-confirm").addEventListener("click", remove);
  $("event-log-link").href = "/ui/events?instanceId=" + encodeURIComponent(id);

  // The Keap defaults not configured yet are offered (unchecked) in the edit form.
  const defaultsLoaded = window.PC.defaults().then(
    (d) => (offered = d["event.poller.configuration"] || {}),
    () => (offered = {})
  );
  loadAll();
  window.PC.liveRefresh(loadAll, $("live-status"));
})();
