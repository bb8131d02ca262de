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
      defaults = await window.PC.defaults();
    } catch (err) {
      return stop("Could not load the resource list: " + errorText(err));
    }
    renderForm(defaults);
  }

  let editor = null;

  function renderForm(defaults) {
    // Start from the Keap defaults, every one selected and editable.
    const keap = defaults["event.poller.configuration"] || {};
    editor = window.PC.resourceEditor(clear($("resources")), keap, keap);
    const interval = $("refresh-interval");
    interval.value = String(defaults.refreshInterval || 15);
    interval.min = String(defaults.minRefreshInterval || 1);
    $("create-panel").hidden = false;
    syncEvents();
    $("name").focus();
  }

  function syncEvents() {
    $("events-fieldset").disabled = !$("events-enabled").checked;
  }

  function addResource() {
    const problem = editor.add($("new-resource").value.trim());
    if (problem) {
      notify("error", problem);
      $("new-resource").setAttribute("aria-invalid", "true");
      return;
    }
    $("new-resource").removeAttribute("aria-invalid");
    $("new-resource").value = "";
  }

  $("events-enabled").addEventListener("change", syncEvents);
  $("select-all").addEventListener("click", () => editor.setAll(true));
  $("select-none").addEventListener("click", () => editor.setAll(false));
  $("add-resource").addEventListener("click", addResource);
  $("new-resource").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addResource();
    }
  });

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
      configuration["event.poller.configuration"] = editor.value();
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
    window.PC.clearMarks();
    if ($("events-enabled").checked && !editor.selected()) {
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
        window.PC.markField(err.message);
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
