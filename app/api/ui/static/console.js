/* Pollinator console: shared helpers (no framework, no build step).
 *
 * The organization and user secrets live in sessionStorage (this tab only) and go to the
 * API only in the Authorization header of fetch calls: never in a URL.
 */
"use strict";

(function () {
  const API = "/elements/api-v2";
  const CONSOLE_API = "/ui/api"; // the console's own reads (app/api/ui/overview.py)
  const AUTH_KEY = "pollinator.console.auth";
  const PENDING_KEY = "pollinator.console.pendingOAuth";
  const NOTICE_KEY = "pollinator.console.notice";

  class ApiError extends Error {
    constructor(status, message, requestId) {
      super(message);
      this.status = status;
      this.requestId = requestId || null;
    }
  }

  function readJson(key) {
    try {
      const raw = sessionStorage.getItem(key);
      return raw ? JSON.parse(raw) : null;
    } catch (e) {
      return null;
    }
  }

  function writeJson(key, value) {
    if (value === null || value === undefined) {
      sessionStorage.removeItem(key);
    } else {
      sessionStorage.setItem(key, JSON.stringify(value));
    }
  }

  function getAuth() {
    const auth = readJson(AUTH_KEY);
    return auth && auth.user && auth.org ? auth : null;
  }

  function authHeader(auth) {
    return "User " + auth.user + ", Organization " + auth.org;
  }

  function setAuth(org, user) {
    writeJson(AUTH_KEY, { org: org, user: user });
  }

  function signOut(notice) {
    sessionStorage.removeItem(AUTH_KEY);
    sessionStorage.removeItem(PENDING_KEY);
    if (notice) {
      sessionStorage.setItem(NOTICE_KEY, notice);
    }
    window.location.assign("/ui/");
  }

  /** The tab's secrets; null (and off to the sign-in page) when it holds none. */
  function requireAuth() {
    const auth = getAuth();
    if (!auth) {
      signOut("Please sign in.");
    }
    return auth;
  }

  function takeNotice() {
    const notice = sessionStorage.getItem(NOTICE_KEY);
    sessionStorage.removeItem(NOTICE_KEY);
    return notice;
  }

  /**
   * Calls the JSON API. Resolves to {data, total}; rejects with ApiError carrying the API's
   * message (which names the offending field). A 401 signs the tab out unless options.auth
   * is given (the sign-in check). options.base replaces the API's base path (CONSOLE_API).
   */
  async function api(method, path, options) {
    const opts = options || {};
    const auth = opts.auth || requireAuth();
    if (!auth) {
      throw new ApiError(401, "not signed in");
    }
    let url = (opts.base || API) + path;
    if (opts.query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(opts.query)) {
        if (value !== null && value !== undefined && value !== "") {
          params.set(key, String(value));
        }
      }
      const qs = params.toString();
      if (qs) {
        url += "?" + qs;
      }
    }
    const headers = { Authorization: authHeader(auth), Accept: "application/json" };
    const init = { method: method, headers: headers, cache: "no-store", redirect: "error" };
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (e) {
      throw new ApiError(0, "the API could not be reached (" + e.message + ")");
    }
    let data = null;
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (!response.ok) {
      const message =
        data && typeof data.message === "string" ? data.message : "HTTP " + response.status;
      if (response.status === 401 && !opts.auth) {
        signOut("Your session was not accepted (" + message + "). Please sign in again.");
      }
      throw new ApiError(response.status, message, data && data.requestId);
    }
    const total = response.headers.get("Elements-Total-Count");
    return { data: data, total: total === null ? null : Number(total) };
  }

  /** el("a", {href: "/x", class: "y"}, "text", child, ...): text is always text, never HTML. */
  function el(tag, attrs) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) {
        continue;
      }
      if (key === "class") {
        node.className = value;
      } else if (key.startsWith("on") && typeof value === "function") {
        node.addEventListener(key.slice(2), value);
      } else if (value === true) {
        node.setAttribute(key, "");
      } else {
        node.setAttribute(key, String(value));
      }
    }
    for (let i = 2; i < arguments.length; i++) {
      append(node, arguments[i]);
    }
    return node;
  }

  function append(node, child) {
    if (child === null || child === undefined || child === false) {
      return;
    }
    if (Array.isArray(child)) {
      child.forEach((c) => append(node, c));
    } else if (child instanceof Node) {
      node.appendChild(child);
    } else {
      node.appendChild(document.createTextNode(String(child)));
    }
  }

  function clear(node) {
    while (node.firstChild) {
      node.removeChild(node.firstChild);
    }
    return node;
  }

  function $(id) {
    return document.getElementById(id);
  }

  /**
   * A table from [{label, render(row), class}] columns; emptyText when there are no rows.
   * Each cell carries its column label, so on a phone the CSS turns every row into a card
   * ("label: value" lines) instead of a table wider than the screen.
   */
  function table(columns, rows, emptyText) {
    if (!rows.length) {
      return el("p", { class: "muted" }, emptyText || "Nothing yet.");
    }
    return el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        { class: "cards" },
        el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c.label)))),
        el(
          "tbody",
          {},
          rows.map((row) =>
            el(
              "tr",
              {},
              columns.map((c) =>
                el(
                  "td",
                  { class: c.class || null, "data-label": c.label || null },
                  el("div", { class: "cell" }, c.render(row))
                )
              )
            )
          )
        )
      )
    );
  }

  /**
   * A collapsible, pretty-printed JSON value. `openKeys` (a Set) remembers which ones the
   * user opened, so a live refresh that re-renders the table does not fold them again.
   */
  function jsonDetails(label, value, key, openKeys) {
    const details = el(
      "details",
      { class: "json", open: openKeys && openKeys.has(key), "data-json-key": key },
      el("summary", {}, label),
      el("pre", {}, JSON.stringify(value, null, 2))
    );
    if (openKeys) {
      details.addEventListener("toggle", () => {
        if (details.open) {
          openKeys.add(key);
        } else {
          openKeys.delete(key);
        }
      });
    }
    return details;
  }

  const LIVE_INTERVAL_MS = 5000;

  /**
   * Calls `refresh` every few seconds while the tab is visible (not at all while hidden,
   * and once right away when it becomes visible again); one call at a time. `status`, when
   * given, is an element that shows when the page was last refreshed.
   */
  function liveRefresh(refresh, status) {
    let timer = null;
    let running = false;

    function hidden() {
      return document.visibilityState === "hidden";
    }

    function schedule() {
      if (timer === null && !hidden()) {
        timer = setTimeout(tick, LIVE_INTERVAL_MS);
      }
    }

    function stop() {
      if (timer !== null) {
        clearTimeout(timer);
        timer = null;
      }
    }

    async function tick() {
      timer = null;
      if (hidden() || running) {
        return;
      }
      running = true;
      try {
        await refresh();
        if (status) {
          const now = new Date().toISOString();
          status.textContent =
            "Live: refreshed at " + now.slice(11, 19) + " UTC, every " +
            LIVE_INTERVAL_MS / 1000 + " s while this tab is visible.";
        }
      } finally {
        running = false;
        schedule();
      }
    }

    document.addEventListener("visibilitychange", () => {
      stop();
      if (hidden()) {
        if (status) {
          status.textContent = "Live refresh paused while this tab is hidden.";
        }
      } else {
        if (status) {
          status.textContent = "Live: refreshing…";
        }
        tick();
      }
    });
    schedule();
    return { stop: stop };
  }

  /**
   * Marks the form control named by an API message ("configuration.x.y: ...": the longest
   * data-field that prefixes it), opening the <details> it sits in and focusing it.
   */
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
    if (!best) {
      return;
    }
    best.setAttribute("aria-invalid", "true");
    for (let node = best.parentElement; node; node = node.parentElement) {
      if (node.tagName === "DETAILS") {
        node.open = true;
      }
    }
    const focusable = best.matches("input, select") ? best : best.querySelector("input, select");
    if (focusable) {
      focusable.focus();
    }
  }

  function clearMarks() {
    document.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
  }

  function setNotice(text) {
    sessionStorage.setItem(NOTICE_KEY, text);
  }

  /** Fetches /ui/defaults.json: the Keap resources and the refresh interval bounds. */
  async function defaults() {
    const response = await fetch("/ui/defaults.json", { cache: "no-store" });
    if (!response.ok) {
      throw new Error("HTTP " + response.status);
    }
    return response.json();
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  /** An ISO date as "YYYY-MM-DD HH:MM:SS UTC" with a relative age in the tooltip. */
  function date(iso) {
    if (!iso) {
      return el("span", { class: "muted" }, "—");
    }
    const d = new Date(iso);
    if (isNaN(d.getTime())) {
      return String(iso);
    }
    const text =
      d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
    return el("time", { datetime: iso, title: iso + " (" + ago(d) + ")" }, text);
  }

  function ago(d) {
    const s = Math.round((Date.now() - d.getTime()) / 1000);
    const abs = Math.abs(s);
    const unit =
      abs < 90 ? abs + " s" : abs < 5400 ? Math.round(abs / 60) + " min" :
      abs < 129600 ? Math.round(abs / 3600) + " h" : Math.round(abs / 86400) + " d";
    return s >= 0 ? unit + " ago" : "in " + unit;
  }

  function badge(text, cls) {
    return el("span", { class: "badge " + (cls || "") }, text);
  }

  function statusBadge(status) {
    return status ? badge(status, "status-" + status) : el("span", { class: "muted" }, "—");
  }

  /** Shows a notice in the #message box: kind is error, info or success. */
  function notify(kind, text, extra) {
    const box = $("message");
    if (!box) {
      return;
    }
    clear(box);
    if (!text) {
      box.hidden = true;
      return;
    }
    box.className = "notice " + kind;
    append(box, text);
    if (extra) {
      append(box, extra);
    }
    box.hidden = false;
  }

  function errorText(err) {
    if (err instanceof ApiError) {
      return err.message + (err.requestId ? " (request " + err.requestId + ")" : "");
    }
    return err && err.message ? err.message : String(err);
  }

  function setupNav(current) {
    const button = $("sign-out");
    if (button) {
      button.addEventListener("click", () => signOut("Signed out."));
    }
    document.querySelectorAll("[data-nav]").forEach((link) => {
      if (link.getAttribute("data-nav") === current) {
        link.setAttribute("aria-current", "page");
      }
    });
  }

  function randomState() {
    const bytes = new Uint8Array(24);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  window.PC = {
    ApiError: ApiError,
    CONSOLE_API: CONSOLE_API,
    PENDING_KEY: PENDING_KEY,
    api: api,
    append: append,
    badge: badge,
    clear: clear,
    clearMarks: clearMarks,
    date: date,
    defaults: defaults,
    el: el,
    errorText: errorText,
    getAuth: getAuth,
    jsonDetails: jsonDetails,
    liveRefresh: liveRefresh,
    markField: markField,
    notify: notify,
    randomState: randomState,
    readJson: readJson,
    requireAuth: requireAuth,
    setAuth: setAuth,
    setNotice: setNotice,
    setupNav: setupNav,
    signOut: signOut,
    statusBadge: statusBadge,
    table: table,
    takeNotice: takeNotice,
    writeJson: writeJson,
    $: $,
  };
})();
