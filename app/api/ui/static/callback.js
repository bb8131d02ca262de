/* /ui/oauth/callback, step 2: the provider sent the user back with ?code=&state=.
 *
 * Checks the state against the pending form, removes code and state from the address bar,
 * then shows the rest of the Open Connectors form and POSTs /instances on "Create Instance".
 */
"use strict";

(function () {
  const { $, api, el, clear, notify, errorText, readJson, writeJson, PENDING_KEY } = window.PC;

  window.PC.setupNav("new");
  if (!window.PC.requireAuth()) {
    return;
  }

  const params = new URLSearchParams(window.location.search);
  if (window.location.search) {
    history.replaceState(null, "", window.location.pathname); // no code in history/bookmarks
  }
  let pending = readJson(PENDING_KEY);

  function stop(text) {
    notify("error", text);
    $("restart").hidden = false;
    $("create-panel").hidden = true;
  }

  function begin() {
    if (params.get("error")) {
      writeJson(PENDING_KEY, pending && { apiKey: pending.apiKey, callbackUrl: pending.callbackUrl });
      const detail = params.get("error_description");
      return stop("The provider did not grant access: " + params.get("error") +
        (detail ? " (" + detail + ")" : ""));
    }
    const code = params.get("code");
    if (code) {
      if (!pending || !pending.state || params.get("state") !== pending.state) {
        writeJson(PENDING_KEY, null);
        return stop(
          "This authorization does not match one started in this tab (state mismatch). " +
            "Start again."
        );
      }
      pending = {
        apiKey: pending.apiKey,
        apiSecret: pending.apiSecret,
        callbackUrl: pending.callbackUrl,
        code: code,
      };
      writeJson(PENDING_KEY, pending); // the state is spent; a reload keeps the code
    } else if (!pending || !pending.code) {
      return stop("No authorization in progress in this tab. Start with the provider's consent.");
    }
    loadDefaults();
  }

  async function loadDefaults() {
    let defaults;
    try {
      const response = await fetch("/ui/defaults.json", { cache: "no-store" });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      defaults = await response.json();
    } catch (err) {
      return stop("Could not load the resource list: " + errorText(err));
    }
    renderForm(defaults);
  }

  let resourceConfigs = {};

  function renderForm(defaults) {
    resourceConfigs = defaults["event.poller.configuration"] || {};
    const list = clear($("resources"));
    Object.keys(resourceConfigs).forEach((name) => {
      const id = "resource-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
      list.appendChild(
        el(
          "li",
          {},
          el("input", { type: "checkbox", id: id, value: name, checked: true, "data-resource": name }),
          " ",
          el("label", { for: id }, name),
          el("code", {}, resourceConfigs[name].url || "")
        )
      );
    });
    const interval = $("refresh-interval");
    interval.value = String(defaults.refreshInterval || 15);
    interval.min = String(defaults.minRefreshInterval || 1);
    $("create-panel").hidden = false;
    syncEvents();
    $("name").focus();
  }

  function resourceBoxes() {
    return Array.from(document.querySelectorAll("input[data-resource]"));
  }

  function syncEvents() {
    $("events-fieldset").disabled = !$("events-enabled").checked;
  }

  $("events-enabled").addEventListener("change", syncEvents);
  $("select-all").addEventListener("click", () => resourceBoxes().forEach((b) => (b.checked = true)));
  $("select-none").addEventListener("click", () =>
    resourceBoxes().forEach((b) => (b.checked = false))
  );

  /** Marks the form control named by an API message ("configuration.x.y: ..."). */
  function markField(message) {
    let best = null;
    document.querySelectorAll("[data-field]").forEach((node) => {
      const field = node.getAttribute("data-field");
      if (
        (message.startsWith(field + ":") || message.startsWith(field + ".")) &&
        (!best || field.length > best.getAttribute("data-field").length)
      ) {
        best = node;
      }
    });
    if (best) {
      best.setAttribute("aria-invalid", "true");
      const focusable = best.matches("input") ? best : best.querySelector("input");
      if (focusable) {
        focusable.focus();
      }
    }
  }

  function buildBody() {
    const enabled = $("events-enabled").checked;
    const configuration = {
      "oauth.api.key": pending.apiKey,
      "oauth.api.secret": pending.apiSecret,
      "oauth.callback.url": pending.callbackUrl,
      "event.notification.enabled": enabled,
      "event.vendor.type": "polling",
    };
    if (enabled) {
      configuration["event.notification.callback.url"] = $("event-callback").value.trim();
      const interval = $("refresh-interval").value.trim();
      configuration["event.poller.refresh_interval"] = interval === "" ? interval : Number(interval);
      const signature = $("signature-key").value;
      if (signature) {
        configuration["event.notification.signature.key"] = signature;
      }
      const poller = {};
      resourceBoxes()
        .filter((b) => b.checked)
        .forEach((b) => (poller[b.value] = resourceConfigs[b.value]));
      configuration["event.poller.configuration"] = poller;
    }
    const tags = $("tags")
      .value.split(",")
      .map((t) => t.trim())
      .filter((t) => t);
    return {
      element: { key: "infusionsoftrest" },
      providerData: { code: pending.code },
      name: $("name").value.trim(),
      tags: tags,
      configuration: configuration,
    };
  }

  function showResult(instance) {
    writeJson(PENDING_KEY, null);
    $("create-panel").hidden = true;
    notify("success", "Instance created.");
    const summary = clear($("result-summary"));
    const rows = [
      ["ID", String(instance.id)],
      ["Name", instance.name],
      ["Events", instance.eventsEnabled ? "on" : "off"],
      ["Resources", Object.keys((instance.configuration || {})["event.poller.configuration"] || {}).join(", ")],
    ];
    rows.forEach(([k, v]) => {
      summary.appendChild(el("dt", {}, k));
      summary.appendChild(el("dd", {}, v));
    });
    $("result-token").textContent = instance.token || "";
    $("result-link").href = "/ui/instance?id=" + encodeURIComponent(instance.id);
    $("result").hidden = false;
  }

  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    document.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
    if ($("events-enabled").checked && !resourceBoxes().some((b) => b.checked)) {
      notify("error", "configuration.event.poller.configuration: pick at least one resource");
      $("resources-fieldset").setAttribute("aria-invalid", "true");
      return;
    }
    const button = $("create-button");
    button.disabled = true;
    notify("info", "Creating…");
    try {
      const result = await api("POST", "/instances", { body: buildBody() });
      showResult(result.data);
    } catch (err) {
      notify("error", errorText(err));
      if (err.message) {
        markField(err.message);
      }
      if (err.message && err.message.startsWith("providerData.code:") && err.status === 400) {
        // The provider refused (or already used) the code: a new consent is needed.
        writeJson(PENDING_KEY, { apiKey: pending.apiKey, callbackUrl: pending.callbackUrl });
        $("restart").hidden = false;
        $("create-panel").hidden = true;
      }
      button.disabled = false;
    }
  });

  begin();
})();
