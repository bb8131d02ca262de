/* /ui/instances/new, step 1: OAuth credentials, then off to the provider's consent page.
 *
 * The pending form (client id, client secret, callback URL and a random state) is kept in
 * sessionStorage for /ui/oauth/callback; only the client id, the callback URL and the state
 * travel in URLs (the client secret stays in this tab until "Create Instance").
 */
"use strict";

(function () {
  const { $, api, notify, errorText, readJson, writeJson, PENDING_KEY } = window.PC;

  window.PC.setupNav("new");
  if (!window.PC.requireAuth()) {
    return;
  }

  const previous = readJson(PENDING_KEY);
  $("oauth-callback").value =
    (previous && previous.callbackUrl) || window.location.origin + "/ui/oauth/callback";
  if (previous && previous.apiKey) {
    $("api-key").value = previous.apiKey;
  }

  function invalid(id, text) {
    const input = $(id);
    input.setAttribute("aria-invalid", "true");
    input.focus();
    notify("error", text);
  }

  $("oauth-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    document
      .querySelectorAll("[aria-invalid]")
      .forEach((n) => n.removeAttribute("aria-invalid"));
    const apiKey = $("api-key").value.trim();
    const apiSecret = $("api-secret").value.trim();
    const callbackUrl = $("oauth-callback").value.trim();
    if (!apiKey) {
      return invalid("api-key", "configuration.oauth.api.key: the client ID is required");
    }
    if (!apiSecret) {
      return invalid("api-secret", "configuration.oauth.api.secret: the client secret is required");
    }
    if (!/^https?:\/\/\S+$/i.test(callbackUrl)) {
      return invalid(
        "oauth-callback",
        "configuration.oauth.callback.url: must be an http(s) URL"
      );
    }
    const button = $("authorize-button");
    button.disabled = true;
    const state = window.PC.randomState();
    try {
      const result = await api("GET", "/elements/infusionsoftrest/oauth/url", {
        query: { apiKey: apiKey, callbackUrl: callbackUrl, state: state },
      });
      const target = result.data && result.data.oauthUrl;
      if (typeof target !== "string" || !/^https?:\/\//i.test(target)) {
        throw new Error("the API returned no usable authorize URL");
      }
      writeJson(PENDING_KEY, {
        state: state,
        apiKey: apiKey,
        apiSecret: apiSecret,
        callbackUrl: callbackUrl,
        startedAt: new Date().toISOString(),
      });
      notify("info", "Redirecting to the provider's consent page…");
      window.location.assign(target);
    } catch (err) {
      notify("error", "Could not start the authorization: " + errorText(err));
      button.disabled = false;
    }
  });
})();
