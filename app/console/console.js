// facegate console: a small static app over the REST API. The admin key lives in this tab's
// sessionStorage only and travels in the X-API-Key header; nothing is loaded from the network
// but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "facegate.adminKey";
const state = { page: "people", offset: 0, limit: 20, person: null, frames: [], timer: null, streams: {}, modelId: "" };

function say(text) { $("status").textContent = text || ""; }

async function api(method, path, body) {
  const headers = { "X-API-Key": sessionStorage.getItem(KEY) || "" };
  const init = { method, headers };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const response = await fetch(path, init);
  if (response.status === 401) { signOut("The key was refused: sign in again."); throw new Error("unauthorised"); }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) {
    const error = new Error(data && data.message ? `${data.code}: ${data.message}` : `HTTP ${response.status}`);
    error.body = data;
    throw error;
  }
  return data;
}

function cell(row, text) { const td = document.createElement("td"); td.textContent = text ?? ""; row.appendChild(td); return td; }
function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
function fixed(x) { return x === null || x === undefined ? "n/a" : Number(x).toFixed(3); }

// -- navigation ---------------------------------------------------------------------------------

function show(page) {
  state.page = page;
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== `page-${page}`;
  for (const button of document.querySelectorAll("nav [data-page]")) {
    if (button.dataset.page === page) button.setAttribute("aria-current", "page"); else button.removeAttribute("aria-current");
  }
  clearInterval(state.timer);
  say("");
  const load = { people: loadPeople, threshold: loadThreshold, events: loadEvents, keys: loadKeys }[page];
  if (load) load().catch((e) => say(e.message));
  if (page === "events") state.timer = setInterval(() => { if ($("events-auto").checked) loadEvents().catch(() => {}); }, 5000);
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  $("nav").hidden = true;
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== "page-signin";
  say(message || "");
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("signin-key").value.trim());
  $("signin-key").value = "";
  try {
    state.modelId = (await api("GET", "/v1/threshold")).model_id;  // an admin-only call: proves the key and its scope
    $("nav").hidden = false;
    show("people");
  } catch (e) { signOut(e.message === "unauthorised" ? "The key was refused." : e.message); }
});
$("signout").addEventListener("click", () => signOut("Signed out."));
for (const button of document.querySelectorAll("nav [data-page]")) button.addEventListener("click", () => show(button.dataset.page));

// -- people -------------------------------------------------------------------------------------

async function loadPeople() {
  const name = $("people-name").value.trim();
  const query = new URLSearchParams({ offset: state.offset, limit: state.limit });
  if (name) query.set("name", name);
  const page = await api("GET", `/v1/persons?${query}`);
  const rows = $("people-rows");
  rows.replaceChildren();
  for (const person of page.data) {
    const row = document.createElement("tr");
    row.tabIndex = 0;
    cell(row, person.id); cell(row, person.name); cell(row, person.frame_count); cell(row, person.search_count); cell(row, when(person.last_matched_at));
    const open = () => openPerson(person.id).catch((e) => say(e.message));
    row.addEventListener("click", open);
    row.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    rows.appendChild(row);
  }
  $("people-page").textContent = `${page.count ? state.offset + 1 : 0}-${state.offset + page.data.length} of ${page.count}`;
  $("people-prev").disabled = state.offset === 0;
  $("people-next").disabled = state.offset + page.data.length >= page.count;
}

async function openPerson(id) {
  const person = await api("GET", `/v1/persons/${id}`);
  state.person = person;
  $("person").hidden = false;
  $("person-title").textContent = `${person.name} (#${person.id})`;
  $("person-name").value = person.name;
  $("person-metadata").value = JSON.stringify(person.metadata, null, 2);
  $("person-facts").textContent =
    `${person.frame_count} frames fused; template for model ${state.modelId}: ${person.has_template ? "yes" : "none (re-enrol)"}; ` +
    `${person.search_count} door matches, last ${when(person.last_matched_at) || "never"}; enrolled ${when(person.created_at)}.`;
  try { $("person-sample").src = URL.createObjectURL(await api("GET", `/v1/persons/${id}/sample`)); } catch { $("person-sample").removeAttribute("src"); }
  $("person-name").focus();
}

$("people-search").addEventListener("submit", (e) => { e.preventDefault(); state.offset = 0; loadPeople().catch((x) => say(x.message)); });
$("people-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadPeople().catch((x) => say(x.message)); });
$("people-next").addEventListener("click", () => { state.offset += state.limit; loadPeople().catch((x) => say(x.message)); });
$("person-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  let metadata;
  try { metadata = JSON.parse($("person-metadata").value || "{}"); } catch { say("Metadata must be a JSON object."); return; }
  try {
    await api("PATCH", `/v1/persons/${state.person.id}`, { name: $("person-name").value, metadata });
    say("Saved."); await loadPeople(); await openPerson(state.person.id);
  } catch (e) { say(e.message); }
});
$("person-delete").addEventListener("click", async () => {
  if (!confirm(`Delete ${state.person.name} (#${state.person.id}) with every template and frame? This cannot be undone.`)) return;
  try { await api("DELETE", `/v1/persons/${state.person.id}`); $("person").hidden = true; say("Deleted."); await loadPeople(); } catch (e) { say(e.message); }
});

// -- camera -------------------------------------------------------------------------------------

async function startCamera(which) {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    state.streams[which] = stream;
    $(`${which}-video`).srcObject = stream;
  } catch (e) { say(`No camera: ${e.message}. Upload photos instead.`); }
}

async function captureBurst(which, count) {
  const video = $(`${which}-video`);
  if (!video.srcObject) await startCamera(which);
  if (!video.videoWidth) await new Promise((resolve) => video.addEventListener("loadeddata", resolve, { once: true }));
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const frames = [];
  for (let i = 0; i < count; i++) {
    canvas.getContext("2d").drawImage(video, 0, 0);
    frames.push(await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92)));
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  return frames;
}

function formOf(frames, fields) {
  const form = new FormData();
  frames.forEach((blob, i) => form.append("frames", blob, `frame${i}.jpg`));
  for (const [name, value] of Object.entries(fields || {})) if (value) form.append(name, value);
  return form;
}

// -- enrol --------------------------------------------------------------------------------------

async function checkFrames(frames) {
  state.frames = frames;
  const list = $("enrol-frames");
  list.replaceChildren();
  const result = await api("POST", "/v1/frames/check", formOf(frames));
  result.frames.forEach((report, i) => {
    const item = document.createElement("li");
    const image = document.createElement("img");
    image.src = URL.createObjectURL(frames[i]); image.alt = `frame ${i + 1}`;
    const verdict = document.createElement("span");
    verdict.className = report.used ? "ok" : "bad";
    verdict.textContent = report.used ? "usable" : (report.reason || "").replaceAll("_", " ");
    item.append(image, verdict);
    list.appendChild(item);
  });
  say(`${result.usable} of ${frames.length} frames usable${result.enough_to_enrol ? "" : ": not enough to enrol, capture again"}.`);
}

$("enrol-start").addEventListener("click", () => startCamera("enrol"));
$("enrol-capture").addEventListener("click", async () => {
  try { await checkFrames(await captureBurst("enrol", Number($("enrol-count").value) || 5)); } catch (e) { say(e.message); }
});
$("enrol-files").addEventListener("change", async () => {
  try { await checkFrames([...$("enrol-files").files]); } catch (e) { say(e.message); }
});
$("enrol-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!state.frames.length) { say("Capture or upload frames first."); return; }
  try {
    const person = await api("POST", "/v1/persons", formOf(state.frames, { name: $("enrol-name").value, metadata: $("enrol-metadata").value.trim() }));
    say(`Enrolled ${person.name} (#${person.id}) from ${person.frame_count} frames.`);
    state.frames = []; $("enrol-frames").replaceChildren(); $("enrol-form").reset();
  } catch (e) {
    const details = e.body && e.body.details;
    say(details && details.person_id ? `${e.message} (person #${details.person_id})` : e.message);
  }
});

// -- door simulator -----------------------------------------------------------------------------

$("door-start").addEventListener("click", () => startCamera("door"));
$("door-identify").addEventListener("click", async () => {
  const out = $("door-result");
  try {
    const frames = await captureBurst("door", Number($("door-count").value) || 5);
    const answer = await api("POST", "/v1/identify", formOf(frames, { door_id: $("door-id").value.trim() }));
    out.className = answer.decision;
    const reasons = answer.frames.map((f) => `frame ${f.index + 1}: ${f.used ? "used" : f.reason} (${f.faces} face${f.faces === 1 ? "" : "s"})`);
    out.textContent = [
      `${answer.decision.toUpperCase()} (${answer.reason})`,
      `person: ${answer.person ? `${answer.person.name} (#${answer.person.id})` : "none"}`,
      `distance ${fixed(answer.distance)} / threshold ${fixed(answer.threshold)} for ${answer.frames_used} frames; margin ${fixed(answer.margin)}`,
      ...reasons,
    ].join("\n");
  } catch (e) { out.className = ""; out.textContent = e.message; }
});

// -- threshold ----------------------------------------------------------------------------------

async function loadThreshold() {
  const t = await api("GET", "/v1/threshold");
  const source = { default: "the model's default", target_far: "a security level set by an admin", distance: "a raw distance set by an admin", configured: "DEFAULT_THRESHOLD" }[t.source];
  $("threshold-now").textContent =
    `In force: ${fixed(t.threshold)} for ${t.template_frames}-frame bursts (${source}` +
    `${t.target_far ? `, FAR ${t.target_far} per comparison` : ""}); 1 frame ${fixed(t.by_frames["1"])}, 16 frames ${fixed(t.by_frames["16"])}. Model ${t.model_id}.`;
  const rows = $("threshold-table"); rows.replaceChildren();
  const select = $("threshold-far-select"); select.replaceChildren();
  for (const row of t.far_table) {
    const tr = document.createElement("tr");
    cell(tr, row.far); cell(tr, fixed(row.by_frames["1"])); cell(tr, fixed(row.by_frames["5"])); cell(tr, fixed(row.by_frames["16"]));
    rows.appendChild(tr);
    const option = new Option(`FAR ${row.far}${row.far === t.default_far ? " (model default)" : ""}`, row.far, false, row.far === t.target_far);
    select.appendChild(option);
  }
  $("threshold-distance-value").value = t.source === "distance" || t.source === "configured" ? t.threshold : "";
  plot(await api("GET", "/v1/threshold/distributions"));
}

function plot(d) {
  const svg = $("threshold-plot");
  const W = 600, H = 200, bins = d.bins, maxX = 1.4;
  const x = (v) => 40 + (Math.min(v, maxX) / maxX) * (W - 50);
  const series = [[d.genuine, "#2e7d32"], [d.impostor, "#c62828"], [d.enrolled_nearest, "#1565c0"]];
  const parts = [`<line x1="40" y1="${H}" x2="${W - 10}" y2="${H}" stroke="#999"/>`];
  for (const [counts, colour] of series) {
    if (!counts) continue;
    const total = counts.reduce((a, b) => a + b, 0) || 1;
    const top = Math.max(...counts.map((c) => c / total)) || 1;
    const points = counts.map((c, i) => `${x((bins[i] + bins[i + 1]) / 2).toFixed(1)},${(H - ((c / total) / top) * (H - 20)).toFixed(1)}`);
    parts.push(`<polyline fill="none" stroke="${colour}" stroke-width="2" points="${points.join(" ")}"/>`);
  }
  for (let v = 0; v <= maxX + 1e-9; v += 0.2) parts.push(`<text x="${x(v)}" y="${H + 15}" font-size="10" text-anchor="middle">${v.toFixed(1)}</text>`);
  parts.push(`<line x1="${x(d.threshold)}" y1="10" x2="${x(d.threshold)}" y2="${H}" stroke="#000" stroke-dasharray="4 3"/>`);
  parts.push(`<text x="${x(d.threshold) + 4}" y="20" font-size="11">threshold ${fixed(d.threshold)}</text>`);
  if (!d.genuine) parts.push(`<text x="300" y="40" font-size="11" text-anchor="middle">The model package carries no evaluation histograms.</text>`);
  svg.innerHTML = parts.join("");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 20}`);
}

$("threshold-far").addEventListener("submit", async (e) => {
  e.preventDefault();
  try { await api("PUT", "/v1/threshold", { target_far: Number($("threshold-far-select").value) }); await loadThreshold(); say("Security level set."); } catch (x) { say(x.message); }
});
$("threshold-distance").addEventListener("submit", async (e) => {
  e.preventDefault();
  try { await api("PUT", "/v1/threshold", { threshold: Number($("threshold-distance-value").value) }); await loadThreshold(); say("Distance set for every burst size."); } catch (x) { say(x.message); }
});
$("threshold-reset").addEventListener("click", async () => {
  try { await api("DELETE", "/v1/threshold"); await loadThreshold(); say("Back to the model's thresholds."); } catch (x) { say(x.message); }
});

// -- events -------------------------------------------------------------------------------------

async function loadEvents() {
  const query = new URLSearchParams({ limit: 50 });
  if ($("events-door").value.trim()) query.set("door_id", $("events-door").value.trim());
  if ($("events-decision").value) query.set("decision", $("events-decision").value);
  if ($("events-person").value) query.set("person_id", $("events-person").value);
  if ($("events-since").value) query.set("since", new Date($("events-since").value).toISOString());
  const page = await api("GET", `/v1/events?${query}`);
  const rows = $("events-rows"); rows.replaceChildren();
  for (const e of page.data) {
    const tr = document.createElement("tr");
    cell(tr, when(e.created_at)); cell(tr, e.kind); cell(tr, e.door_id); cell(tr, e.decision); cell(tr, e.reason);
    cell(tr, e.person_id); cell(tr, fixed(e.distance)); cell(tr, e.key_name);
    rows.appendChild(tr);
  }
}
$("events-filter").addEventListener("submit", (e) => { e.preventDefault(); loadEvents().catch((x) => say(x.message)); });

// -- keys ---------------------------------------------------------------------------------------

async function loadKeys() {
  const page = await api("GET", "/v1/keys");
  const rows = $("keys-rows"); rows.replaceChildren();
  for (const k of page.data) {
    const tr = document.createElement("tr");
    cell(tr, k.id); cell(tr, k.name); cell(tr, k.scope); cell(tr, when(k.expires_at) || "never"); cell(tr, when(k.last_used_at));
    cell(tr, k.revoked_at ? "revoked" : "active");
    const td = cell(tr, "");
    if (!k.revoked_at) {
      const button = document.createElement("button");
      button.type = "button"; button.className = "danger"; button.textContent = "Revoke";
      button.setAttribute("aria-label", `Revoke key ${k.name}`);
      button.addEventListener("click", async () => {
        if (!confirm(`Revoke key ${k.name}? Doors using it are refused at once.`)) return;
        try { await api("DELETE", `/v1/keys/${k.id}`); await loadKeys(); } catch (x) { say(x.message); }
      });
      td.appendChild(button);
    }
    rows.appendChild(tr);
  }
}
$("keys-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const days = Number($("keys-days").value) || null;
  try {
    const created = await api("POST", "/v1/keys", { name: $("keys-name").value, scope: $("keys-scope").value, expires_in_days: days });
    $("keys-created").textContent = `Key for ${created.name} (shown once, store it now): ${created.key}`;
    $("keys-form").reset(); await loadKeys();
  } catch (x) { say(x.message); }
});

// -- start --------------------------------------------------------------------------------------

if (sessionStorage.getItem(KEY)) {
  api("GET", "/v1/threshold").then((t) => { state.modelId = t.model_id; $("nav").hidden = false; show("people"); }).catch(() => signOut("Sign in with an admin key."));
} else {
  signOut();
}
