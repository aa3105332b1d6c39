// The Dreamcam control page: widgets built from the settings schema the app sends, every change
// through POST /api/settings (the app's one settings path), everything else pushed over /ws.
"use strict";

const HISTORY = 120; // status points in the graph (about one a second)
const ui = {
  schema: null,        // {groups, fields}
  settings: {},        // the settings in force, as the app last said
  version: -1,         // their version: replies and pushes may cross, the newest wins
  widgets: new Map(),  // name -> {field, set(value), busy(), error(text)}
  history: [],         // [{latency, fps}]
  socket: null,
  retry: 500,
};
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

// ---- talking to the app ---------------------------------------------------------------------
async function call(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (exc) {
    return { ok: false, field: "request", error: "the app does not answer (is it still running?)" };
  }
  try {
    return await response.json();
  } catch (exc) {
    return { ok: false, field: "request", error: `refused (${response.status}): open the address dreamcam run printed` };
  }
}

async function apply(name, value) {
  const widget = ui.widgets.get(name);
  const reply = await call("POST", "/api/settings", { changes: { [name]: value } });
  if (reply.ok) {
    widget.error("");
    showSettings(reply.settings, reply.version);
  } else {
    const target = ui.widgets.get(reply.field) || widget;
    target.error(reply.error);
    widget.revert(); // the value in force did not change
  }
  return reply.ok;
}

function connect() {
  const socket = new WebSocket(`ws://${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  ui.socket = socket;
  socket.onopen = () => { ui.retry = 500; setLink("live"); sendPreviewWish(); };
  socket.onmessage = (event) => {
    if (typeof event.data === "string") onMessage(JSON.parse(event.data));
    else onFrame(new Uint8Array(event.data));
  };
  socket.onclose = async () => {
    ui.socket = null;
    const check = await fetch("/api/presets", { credentials: "same-origin" }).catch(() => null);
    if (check && check.status === 403) {
      setLink("refused", "not allowed: open the address dreamcam run printed");
      return;
    }
    setLink("connecting", "reconnecting");
    setTimeout(connect, ui.retry);
    ui.retry = Math.min(ui.retry * 2, 5000);
  };
}

function setLink(state, text) {
  const link = $("link");
  link.dataset.state = state;
  link.textContent = text || state;
}

function sendPreviewWish() {
  if (!ui.socket || ui.socket.readyState !== WebSocket.OPEN) return;
  const kinds = $("show-input").checked ? ["output", "input"] : ["output"];
  ui.socket.send(JSON.stringify({ type: "preview", kinds }));
}

function onMessage(message) {
  switch (message.type) {
    case "hello":
      if (!ui.schema) build(message.schema);
      showApp(message.app);
      showPresets(message.presets);
      ui.version = -1; // a new connection may be a restarted app, counting from 0 again
      showSettings(message.settings, message.version);
      if (!$("img-output").dataset.frames) setAspect(message.settings.width, message.settings.height);
      showStatus(message.status);
      break;
    case "settings": showSettings(message.settings, message.version); break;
    case "status": showStatus(message.status); break;
    case "presets": showPresets(message.presets); break;
  }
}

function onFrame(bytes) {
  const kinds = ["output", "input"];
  const img = $(`img-${kinds[bytes[0]]}`);
  if (!img) return;
  const url = URL.createObjectURL(new Blob([bytes.subarray(1)], { type: "image/jpeg" }));
  const old = img.dataset.url;
  img.onload = () => {
    if (old) URL.revokeObjectURL(old);
    if (img.id === "img-output") setAspect(img.naturalWidth, img.naturalHeight);
  };
  img.dataset.url = url;
  img.dataset.frames = String(Number(img.dataset.frames || 0) + 1);
  img.src = url;
}

// ---- the form, from the schema --------------------------------------------------------------
function build(schema) {
  ui.schema = schema;
  const form = $("settings");
  const live = schema.fields.filter((f) => f.live && f.name !== "preset");
  const groups = [...schema.groups, "More"];
  for (const group of groups) {
    const fields = live.filter((f) => (f.panel ? f.group : "More") === group);
    if (!fields.length) continue;
    const box = el("fieldset", { class: "card", "data-group": group }, el("legend", { text: group }));
    for (const field of fields) box.append(makeWidget(field));
    form.append(box);
  }
}

function makeWidget(field) {
  const id = `f-${field.name}`;
  const row = el("div", { class: `field ${field.widget}`, "data-name": field.name, title: field.help || "" });
  const error = el("div", { class: "error", id: `${id}-error`, role: "status" });
  const make = { multiline: multiline, slider: slider, toggle: toggle, choice: choice, number: number, list: list };
  const widget = (make[field.widget] || text)(field, id, row);
  widget.field = field;
  widget.error = (message) => { error.textContent = message || ""; };
  widget.revert = () => widget.set(ui.settings[field.name], true);
  row.append(error);
  ui.widgets.set(field.name, widget);
  return row;
}

function label(field, id, extra) {
  const node = el("label", { for: id }, el("span", { text: field.label }));
  if (extra) node.append(extra);
  return node;
}

// Text with an explicit Apply: Enter applies (Shift+Enter: new line), nothing applies while typing,
// and a change from elsewhere never overwrites what is being typed (it is offered instead).
function multiline(field, id, row) {
  const area = el("textarea", { id, rows: field.name === "prompt" ? 3 : 2, maxlength: field.max_chars, spellcheck: "false" });
  const applyButton = el("button", { type: "button", class: "primary", id: `${id}-apply`, text: "Apply", disabled: true });
  const note = el("div", { class: "note", id: `${id}-note` });
  let dirty = false;
  const markDirty = (value) => { dirty = value; row.classList.toggle("dirty", value); applyButton.disabled = !value; };
  const submit = async () => {
    if (await apply(field.name, area.value)) { markDirty(false); note.textContent = ""; }
  };
  area.addEventListener("input", () => markDirty(area.value !== ui.settings[field.name]));
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); submit(); }
    if (event.key === "Escape") { markDirty(false); area.value = ui.settings[field.name]; note.textContent = ""; }
  });
  applyButton.addEventListener("click", submit);
  row.append(label(field, id), area, el("div", { class: "row" }, note, applyButton));
  return {
    set(value, force) {
      if (!dirty || force) { if (!dirty) area.value = value; note.textContent = ""; return; }
      note.textContent = value === area.value ? "" : "changed elsewhere; Apply replaces it, Esc takes it";
    },
  };
}

function slider(field, id, row) {
  const input = el("input", { id, type: "range", min: field.min, max: field.max, step: field.step || (field.integer ? 1 : "any") });
  const shown = el("span", { class: "value", id: `${id}-value` });
  const format = (v) => (field.integer ? String(v) : Number(v).toFixed(decimals(field.step)));
  let held = false; // while the thumb is held, pushes wait
  input.addEventListener("input", () => { shown.textContent = format(input.value); });
  input.addEventListener("pointerdown", () => { held = true; });
  input.addEventListener("pointerup", () => { held = false; });
  input.addEventListener("change", () => { held = false; apply(field.name, Number(input.value)); });
  row.append(label(field, id, shown), input);
  return {
    set(value, force) {
      if (held && !force) return;
      input.value = value;
      shown.textContent = format(value);
    },
  };
}

function number(field, id, row) {
  const input = el("input", { id, type: "number", min: field.min, max: field.max, step: field.step || "any", inputmode: "decimal" });
  input.addEventListener("change", () => apply(field.name, input.value === "" ? null : Number(input.value)));
  input.addEventListener("wheel", () => input.blur(), { passive: true }); // scrolling never edits a number
  row.append(label(field, id), input);
  return { set(value, force) { if (force || document.activeElement !== input) input.value = value; } };
}

function toggle(field, id, row) {
  const input = el("input", { id, type: "checkbox" });
  input.addEventListener("change", () => apply(field.name, input.checked));
  row.append(el("label", { for: id }, input, el("span", { text: field.label })));
  return { set(value) { input.checked = Boolean(value); } };
}

function choice(field, id, row) {
  const select = el("select", { id }, ...field.choices.map((c) => el("option", { value: c, text: c })));
  select.addEventListener("change", () => apply(field.name, select.value));
  row.append(label(field, id), select);
  return { set(value) { select.value = value; } };
}

// A list of whole numbers typed as "32,45"; empty (for a nullable field) is none.
function list(field, id, row) {
  const input = el("input", { id, type: "text", placeholder: field.nullable ? "none" : "", inputmode: "numeric" });
  input.addEventListener("change", () => {
    const text = input.value.trim();
    const parts = text.replace(/[\[\]\s]/g, "").split(",").filter((p) => p !== "");
    const value = !parts.length && field.nullable ? null : parts.map((p) => (/^-?\d+(\.\d+)?$/.test(p) ? Number(p) : p));
    apply(field.name, value);
  });
  input.addEventListener("keydown", (event) => { if (event.key === "Enter") input.blur(); });
  row.append(label(field, id), input);
  return { set(value, force) { if (force || document.activeElement !== input) input.value = value == null ? "" : value.join(","); } };
}

function text(field, id, row) {
  const input = el("input", { id, type: "text", maxlength: field.max_chars });
  input.addEventListener("change", () => apply(field.name, input.value === "" && field.nullable ? null : input.value));
  input.addEventListener("keydown", (event) => { if (event.key === "Enter") input.blur(); });
  row.append(label(field, id), input);
  return { set(value, force) { if (force || document.activeElement !== input) input.value = value == null ? "" : value; } };
}

function decimals(step) {
  const textStep = String(step || 0.01);
  return textStep.includes(".") ? textStep.split(".")[1].length : 0;
}

// ---- showing what the app says --------------------------------------------------------------
function showSettings(settings, version) {
  if (version < ui.version) return;
  ui.version = version;
  ui.settings = settings;
  for (const [name, widget] of ui.widgets) {
    if (name in settings) widget.set(settings[name]);
  }
  if (settings.preset && [...$("preset-list").options].some((o) => o.value === settings.preset)) {
    $("preset-list").value = settings.preset;
  }
}

function showStatus(status) {
  const numbers = { fps_in: 1, fps_out: 1, infer_ms: 0, latency_ms: 0, dropped: 0 };
  for (const [key, digits] of Object.entries(numbers)) {
    const value = status[key];
    $(`st-${key}`).textContent = value == null ? "-" : Number(value).toFixed(digits);
  }
  $("st-skip_ratio").textContent = status.skip_ratio == null ? "-" : (status.skip_ratio * 100).toFixed(0);
  $("status-error").textContent = status.error || "";
  $("engine").textContent = [status.model, status.engine].filter(Boolean).join(" · ");
  if (status.running) {
    ui.history.push({ latency: status.latency_ms || 0, fps: status.fps_out || 0 });
    if (ui.history.length > HISTORY) ui.history.shift();
    drawGraph();
  }
}

function drawGraph() {
  const canvas = $("graph");
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio), height = Math.round(canvas.clientHeight * ratio);
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  g.strokeStyle = "#3c404b"; g.lineWidth = 1;
  g.beginPath(); g.moveTo(0, height - 0.5); g.lineTo(width, height - 0.5); g.stroke();
  const styles = getComputedStyle(document.documentElement);
  const series = [["latency", styles.getPropertyValue("--lat")], ["fps", styles.getPropertyValue("--fps")]];
  g.font = `${10 * ratio}px system-ui, sans-serif`;
  series.forEach(([key, color], n) => {
    const values = ui.history.map((p) => p[key]);
    const top = Math.max(1, ...values) * 1.15;
    g.strokeStyle = color; g.fillStyle = color; g.lineWidth = 1.5 * ratio;
    g.beginPath();
    values.forEach((v, i) => {
      const x = width - (values.length - 1 - i) * (width / (HISTORY - 1));
      const y = height - 2 - (v / top) * (height - 4);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
    g.fillText(`${Math.round(top / 1.15)}${key === "fps" ? " fps" : " ms"}`, 2 + n * 60 * ratio, 11 * ratio);
  });
}

function showPresets(names) {
  const select = $("preset-list");
  const keep = select.value || ui.settings.preset;
  select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  if (!names.length) select.append(el("option", { value: "", text: "no presets yet" }));
  if (names.includes(keep)) select.value = keep;
  $("preset-load").disabled = $("preset-delete").disabled = !names.length;
}

function showApp(app) {
  const list = $("app-settings");
  list.replaceChildren();
  const fields = ui.schema.fields.filter((f) => !f.live && f.name in app);
  for (const field of fields) {
    const value = app[field.name];
    list.append(el("dt", { text: field.label }), el("dd", { text: value == null ? "none" : String(value) }));
  }
}

// the preview boxes take the output's aspect: its frames' (the camera's size), before the first the stream's
function setAspect(width, height) {
  if (width && height) document.documentElement.style.setProperty("--aspect", `${width} / ${height}`);
}

// ---- presets --------------------------------------------------------------------------------
function presetError(reply) { $("preset-error").textContent = reply.ok ? "" : reply.error; return reply.ok; }

function wirePresets() {
  const select = $("preset-list"), name = $("preset-name"), remove = $("preset-delete");
  $("preset-load").addEventListener("click", async () => {
    if (!select.value) return;
    const reply = await call("POST", `/api/presets/${encodeURIComponent(select.value)}/load`);
    if (presetError(reply)) showSettings(reply.settings, reply.version);
  });
  $("preset-save").addEventListener("click", async () => {
    const chosen = name.value.trim() || select.value;
    if (!chosen) { presetError({ ok: false, error: "preset: type a name first" }); return; }
    const reply = await call("PUT", `/api/presets/${encodeURIComponent(chosen)}`);
    if (presetError(reply)) { showPresets(reply.presets); select.value = chosen; name.value = ""; }
  });
  let armed = null; // Delete asks once more before it deletes
  remove.addEventListener("click", async () => {
    if (!select.value) return;
    if (!armed) {
      remove.textContent = "Sure?";
      armed = setTimeout(() => { remove.textContent = "Delete"; armed = null; }, 3000);
      return;
    }
    clearTimeout(armed); armed = null; remove.textContent = "Delete";
    const reply = await call("DELETE", `/api/presets/${encodeURIComponent(select.value)}`);
    if (presetError(reply)) showPresets(reply.presets);
  });
  name.addEventListener("keydown", (event) => { if (event.key === "Enter") $("preset-save").click(); });
}

// ---- start ----------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("settings").addEventListener("submit", (event) => event.preventDefault());
  const showInput = $("show-input");
  showInput.checked = localStorage.getItem("dreamcam.showInput") === "1";
  $("fig-input").hidden = !showInput.checked;
  showInput.addEventListener("change", () => {
    localStorage.setItem("dreamcam.showInput", showInput.checked ? "1" : "0");
    $("fig-input").hidden = !showInput.checked;
    sendPreviewWish();
  });
  wirePresets();
  window.addEventListener("resize", drawGraph);
  connect();
});
