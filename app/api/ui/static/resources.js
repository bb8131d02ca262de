/* Per-resource poller configuration editor (event.poller.configuration), for the create
 * form and the instance's edit form.
 *
 * Each resource is a checkbox (poll it or not) and a <details> with its settings: URL,
 * idField, updated/created date fields, formats and time zones, pollDelay, pageSize,
 * createdCheckTolerance and filterByUpdatedDate. The output starts from each resource's
 * JSON as given and changes only the settings the user edited, so an untouched resource is
 * sent back exactly as it came (unknown Open Connectors keys, string numbers and date
 * settings kept on the resource itself included). Validation is the API's: its messages
 * name the key, and every input carries that key in data-field.
 */
"use strict";

(function () {
  const { el } = window.PC;
  const POLLER = "configuration.event.poller.configuration";
  const NAME_RE = /^[A-Za-z][A-Za-z0-9_\-/]{0,99}$/;
  const DATE_FORMATS = [
    "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
    "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'",
    "yyyy-MM-dd'T'HH:mm:ssXXX",
    "yyyy-MM-dd HH:mm:ss",
    "milliseconds",
    "seconds",
  ];

  // [key, label, kind, hint]; "dates" kinds live in datesConfiguration.
  const SETTINGS = [
    ["url", "URL", "text", "Relative to the Keap REST base; ${gmtDate:…} and friends allowed."],
    ["idField", "ID field", "text", "Dotted path of the record's id."],
    ["updatedDateField", "Updated date field", "dates", ""],
    ["updatedDateFormat", "Updated date format", "format", ""],
    ["updatedDateTimezone", "Updated date time zone", "zone", ""],
    ["createdDateField", "Created date field", "dates", ""],
    ["createdDateFormat", "Created date format", "format", ""],
    ["createdDateTimezone", "Created date time zone", "zone", ""],
    ["pollDelay", "Poll delay (s)", "number", "How far the provider's clock may lag."],
    ["pageSize", "Page size", "number", "Records per request (Keap: at most 1000)."],
    ["createdCheckTolerance", "Created check tolerance (s)", "number", ""],
    ["filterByUpdatedDate", "Filter by updated date", "bool", ""],
  ];

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function copy(value) {
    return JSON.parse(JSON.stringify(value));
  }

  /** Where the poller reads a date setting: datesConfiguration first, then the resource. */
  function dateSetting(resource, key) {
    const names = key.endsWith("Timezone") ? [key, key.replace(/Timezone$/, "TimeZone")] : [key];
    for (const container of [resource.datesConfiguration, resource]) {
      if (isObject(container)) {
        for (const name of names) {
          if (name in container) {
            return container[name];
          }
        }
      }
    }
    return undefined;
  }

  function shown(resource, key, kind) {
    let value;
    if (kind === "dates" || kind === "format" || kind === "zone") {
      value = dateSetting(resource, key);
    } else if (kind === "bool") {
      value = "filterByUpdatedDate" in resource ? resource.filterByUpdatedDate : resource.filterByUpdateDate;
      return !(value === false || String(value).toLowerCase() === "false");
    } else {
      value = resource[key];
    }
    return value === undefined || value === null ? "" : String(value);
  }

  function setDateSetting(resource, key, value) {
    const names = key.endsWith("Timezone") ? [key, key.replace(/Timezone$/, "TimeZone")] : [key];
    if (!isObject(resource.datesConfiguration)) {
      resource.datesConfiguration = {};
    }
    names.forEach((name) => {
      delete resource[name];
      delete resource.datesConfiguration[name];
    });
    if (value !== "") {
      resource.datesConfiguration[key] = value;
    }
    if (!Object.keys(resource.datesConfiguration).length) {
      delete resource.datesConfiguration;
    }
  }

  function apply(resource, key, kind, value) {
    if (kind === "bool") {
      delete resource.filterByUpdateDate;
      resource.filterByUpdatedDate = value;
    } else if (kind === "dates" || kind === "format" || kind === "zone") {
      setDateSetting(resource, key, value.trim());
    } else if (value.trim() === "") {
      delete resource[key];
    } else if (kind === "number") {
      const number = Number(value);
      resource[key] = Number.isFinite(number) ? number : value.trim(); // the API names a bad one
    } else {
      resource[key] = value.trim();
    }
  }

  let datalists = null;

  /** Shared <datalist>s of date formats and IANA zones (suggestions; any value is allowed). */
  function ensureDatalists() {
    if (datalists) {
      return;
    }
    const zones =
      typeof Intl.supportedValuesOf === "function" ? ["GMT", "UTC"].concat(Intl.supportedValuesOf("timeZone")) : ["GMT", "UTC"];
    datalists = el(
      "div",
      { hidden: true },
      el("datalist", { id: "date-formats" }, DATE_FORMATS.map((f) => el("option", { value: f }))),
      el("datalist", { id: "time-zones" }, zones.map((z) => el("option", { value: z })))
    );
    document.body.appendChild(datalists);
  }

  /**
   * Renders the editor into `container` (a list element). `configured` is the resources'
   * JSON as stored (checked); `offered` adds resources shown unchecked (the Keap defaults
   * not configured yet). Returns {value(), selected(), add(name)}.
   */
  function create(container, configured, offered, prefix) {
    ensureDatalists();
    const idPrefix = prefix || "resource";
    const entries = [];

    function addEntry(name, original, checked, open) {
      const safe = name.replace(/[^A-Za-z0-9_-]/g, "_");
      const id = idPrefix + "-" + safe;
      const fields = [];
      const grid = el("div", { class: "resource-grid" });
      SETTINGS.forEach(([key, label, kind, hint]) => {
        const inputId = id + "-" + key;
        const initial = shown(original, key, kind);
        const dataField =
          POLLER + "." + name + (kind === "dates" || kind === "format" || kind === "zone" ? ".datesConfiguration." : ".") + key;
        let input;
        if (kind === "bool") {
          input = el("input", { type: "checkbox", id: inputId, checked: initial, "data-field": dataField, "data-key": key });
          grid.appendChild(
            el("div", { class: "field wide" }, el("label", { class: "checkbox", for: inputId }, input, " " + label, " ", el("code", {}, key)))
          );
        } else {
          input = el("input", {
            type: kind === "number" ? "number" : "text",
            step: kind === "number" ? "any" : null,
            min: kind === "number" ? "0" : null,
            id: inputId,
            value: initial,
            spellcheck: "false",
            list: kind === "format" ? "date-formats" : kind === "zone" ? "time-zones" : null,
            "data-field": dataField,
            "data-key": key,
          });
          grid.appendChild(
            el(
              "div",
              { class: "field" + (key === "url" ? " wide" : "") },
              el("label", { for: inputId }, label, " ", el("code", {}, key)),
              input,
              hint ? el("div", { class: "hint" }, hint) : null
            )
          );
        }
        fields.push({ key: key, kind: kind, input: input, initial: initial });
      });
      const box = el("input", { type: "checkbox", id: id, value: name, checked: checked, "data-resource": name });
      const summaryUrl = el("code", { class: "resource-url" }, original.url || "");
      const details = el("details", { class: "resource-config", open: open }, el("summary", {}, "Configure " + name), grid);
      const item = el(
        "li",
        { class: "resource", "data-resource-name": name, "data-field": POLLER + "." + name },
        el("div", { class: "resource-head" }, box, " ", el("label", { for: id }, name), summaryUrl),
        details
      );
      fields[0].input.addEventListener("input", () => {
        summaryUrl.textContent = fields[0].input.value;
      });
      container.appendChild(item);
      entries.push({ name: name, original: original, box: box, fields: fields, details: details });
    }

    // Configured resources first: in the offered (Keap) order, then the others by name
    // (the database keeps JSON object keys in its own order, not the one they were given in).
    const known = Object.keys(offered || {});
    const rank = (name) => (known.includes(name) ? known.indexOf(name) : known.length);
    Object.keys(configured)
      .sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0))
      .forEach((name) => {
        const resource = configured[name];
        addEntry(name, isObject(resource) ? copy(resource) : {}, true, false);
      });
    Object.entries(offered || {}).forEach(([name, resource]) => {
      if (!(name in configured)) {
        addEntry(name, copy(resource), false, false);
      }
    });

    return {
      /** The checked resources as event.poller.configuration, edits applied. */
      value() {
        const result = {};
        entries
          .filter((e) => e.box.checked)
          .forEach((e) => {
            const resource = copy(e.original);
            e.fields.forEach((f) => {
              const now = f.kind === "bool" ? f.input.checked : f.input.value;
              if (now !== f.initial) {
                apply(resource, f.key, f.kind, now);
              }
            });
            result[e.name] = resource;
          });
        return result;
      },
      selected() {
        return entries.filter((e) => e.box.checked).length;
      },
      setAll(checked) {
        entries.forEach((e) => (e.box.checked = checked));
      },
      /** Adds a resource of the given name (checked, settings open); an error text or null. */
      add(name) {
        if (!NAME_RE.test(name)) {
          return (
            POLLER + "." + name + ": a resource name must start with a letter and contain only " +
            "letters, digits, '_', '-' and '/'"
          );
        }
        if (entries.some((e) => e.name === name)) {
          return POLLER + "." + name + ": this resource is already in the list";
        }
        addEntry(name, {}, true, true);
        entries[entries.length - 1].fields[0].input.focus();
        return null;
      },
    };
  }

  window.PC.resourceEditor = create;
})();
