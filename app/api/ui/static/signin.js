/* /ui/: sign in with the organization and user secrets (checked against the API). */
"use strict";

(function () {
  const { $, api, notify, errorText } = window.PC;

  const notice = window.PC.takeNotice();
  if (notice) {
    notify("info", notice);
  }
  if (window.PC.getAuth()) {
    $("continue-link").hidden = false;
  }

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const org = $("org-secret").value.trim();
    const user = $("user-secret").value.trim();
    if (!org || !user) {
      notify("error", "Enter both the organization secret and the user secret.");
      (org ? $("user-secret") : $("org-secret")).focus();
      return;
    }
    if (/[\s,]/.test(org + user)) {
      notify("error", "Secrets cannot contain spaces or commas.");
      return;
    }
    const button = $("signin-button");
    button.disabled = true;
    notify("info", "Checking…");
    try {
      await api("GET", "/instances", { auth: { org: org, user: user }, query: { pageSize: 1 } });
      window.PC.setAuth(org, user);
      window.location.assign("/ui/instances");
    } catch (err) {
      const text =
        err.status === 401
          ? "Those secrets were not accepted: " + err.message
          : "Could not sign in: " + errorText(err);
      notify("error", text);
      button.disabled = false;
    }
  });
})();
