// The diskless web console: machines with their live boot stage, discovered MACs, a feed of
// boot events, and the actions the REST API offers. Every value from the server reaches the
// page through textContent or a property, never as markup.

import { follow } from "./sse.js";

const TOKEN_KEY = "diskless.token";
const FEED_LIMIT = 200;
const REFRESH_MS = 15000;

// Boot stages in the order a diskless boot goes through them (BootStage on the server).
const STEPS = [
  { label: "DHCP", stages: ["dhcp-offer", "dhcp-ack", "proxy-offer"] },
  { label: "boot file sent", stages: ["tftp-sent", "http-file"] },
  { label: "script served", stages: ["http-script"] },
  { label: "iSCSI login", stages: ["iscsi-login"] },
  { label: "first write", stages: ["iscsi-first-write"] },
  { label: "logged out", stages: ["iscsi-logout"] },
];
const STEP_OF = new Map(STEPS.flatMap((step, index) => step.stages.map((s) => [s, index])));
const ONCE_TARGETS = [
  ["sanboot", "its disk (sanboot)"],
  ["local", "local disk"],
  ["netbootxyz", "netboot.xyz"],
];

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  machines: [],
  groups: new Map(),
  latest: new Map(), // MAC -> latest boot event
  feedKeys: new Set(),
  abort: null,
  timer: null,
};

// -- DOM helpers --------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.includes("-")) node.setAttribute(key, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

function when(value) {
  if (value === null || value === undefined) return "";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  if (seconds < 60) return `${Math.max(seconds, 0)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return date.toLocaleString();
}

function notify(message, error = false) {
  const notice = $("notice");
  notice.textContent = message;
  notice.classList.toggle("error", error);
}

// -- REST ---------------------------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}` }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized("the token was refused");
  const text = await response.text();
  let payload = null;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = { detail: text.trim() }; // a proxy's or a crash's plain-text answer
  }
  if (!response.ok) {
    const detail = payload && payload.detail;
    const reason = typeof detail === "string" ? detail : JSON.stringify(detail ?? payload);
    throw new Error(`${method} ${path}: ${response.status} ${reason}`);
  }
  return payload;
}

async function act(description, method, path, body) {
  try {
    await api(method, path, body);
    notify(description);
    await loadInventory();
  } catch (error) {
    if (error instanceof Unauthorized) return logout(error.message);
    notify(error.message, true);
  }
}

// -- machines -----------------------------------------------------------------------------------

function describeTarget(target) {
  if (!target) return "";
  if (target.kind === "sanboot") return target.disk ? `sanboot ${target.disk}` : "sanboot";
  if (target.kind === "chain" || target.kind === "netbootxyz") return `${target.kind} ${target.url}`;
  if (target.kind === "linux") return `linux ${target.kernel}`;
  if (target.kind === "winpe") return `winpe ${target.folder}`;
  return target.kind;
}

// A machine's own value, else its group's (shown as inherited), as the server resolves it.
function resolved(machine, field, format = (v) => String(v)) {
  const own = machine[field];
  if (own !== null && own !== undefined) return el("span", { text: format(own) });
  const group = machine.group ? state.groups.get(machine.group) : undefined;
  const inherited = group ? group[field] : null;
  if (inherited === null || inherited === undefined) return el("span", { text: "" });
  return el("span", { class: "inherited", text: format(inherited), title: `from group ${group.name}` });
}

function stageCell(event) {
  const index = event ? STEP_OF.get(event.stage) ?? -1 : -1;
  const steps = el("span", { class: "steps" });
  STEPS.forEach((step, i) => {
    steps.append(el("i", { class: i < index ? "done" : i === index ? "current" : "", title: step.label }));
  });
  const label = event ? (index >= 0 ? STEPS[index].label : event.stage) : "not seen";
  const text = el("span", { class: "stage-label", text: label });
  const wrapper = el("span", { class: "stage", dataset: { stage: event ? event.stage : "" } }, steps, text);
  if (event) wrapper.title = `${event.stage} ${event.detail} (${when(event.at)})`;
  return el("td", { class: "stage-cell" }, wrapper);
}

function actionsCell(machine) {
  const choice = el("select", { "aria-label": "next boot once target" });
  for (const [kind, label] of ONCE_TARGETS) choice.append(el("option", { value: kind, text: label }));
  const key = encodeURIComponent(machine.hostname);
  const once = el("button", {
    type: "button",
    class: "set-once",
    text: "Boot once",
    onclick: () =>
      act(`${machine.hostname} boots ${choice.value} once`, "PUT", `/machines/${key}/next-boot-once`, {
        target: { kind: choice.value },
      }),
  });
  const cancel = machine.next_boot_once
    ? el("button", {
        type: "button",
        class: "cancel-once",
        text: "Cancel once",
        onclick: () => act(`${machine.hostname}: next boot once cancelled`, "DELETE", `/machines/${key}/next-boot-once`),
      })
    : null;
  const reset = el("button", {
    type: "button",
    class: "reset-disk",
    text: "Reset disk",
    onclick: () => {
      if (confirm(`Throw away everything ${machine.hostname} wrote to its disk?`)) {
        act(`${machine.hostname}: disk reset`, "POST", `/machines/${key}/disk/reset`);
      }
    },
  });
  return el("td", { class: "actions" }, choice, once, cancel, reset);
}

function machineRow(machine) {
  const event = state.latest.get(machine.mac);
  const lastSeen = latestTime(machine);
  return el(
    "tr",
    { dataset: { mac: machine.mac } },
    el("td", { class: "hostname", text: machine.hostname }),
    el("td", { class: "mac", text: machine.mac }),
    el("td", { class: "ip", text: machine.ip ?? "" }),
    el("td", { text: machine.group ?? "" }),
    el("td", {}, resolved(machine, "image"), " ", resolved(machine, "image_version", (v) => `v${v}`)),
    el("td", {}, resolved(machine, "disk_mode")),
    el("td", {}, resolved(machine, "boot", describeTarget)),
    el("td", { class: "once", text: describeTarget(machine.next_boot_once) }),
    el("td", { class: "last-seen", text: when(lastSeen), title: lastSeen ? new Date(lastSeen * 1000).toISOString() : "" }),
    stageCell(event),
    actionsCell(machine),
  );
}

// The later of the stored last_seen (written in batches) and the last live event.
function latestTime(machine) {
  const stored = machine.last_seen ? Date.parse(machine.last_seen) / 1000 : null;
  const live = state.latest.get(machine.mac)?.at ?? null;
  if (stored === null) return live;
  return live === null ? stored : Math.max(stored, live);
}

function renderMachines() {
  const body = $("machines").tBodies[0];
  body.replaceChildren(...state.machines.map(machineRow));
  $("no-machines").hidden = state.machines.length > 0;
  const booting = state.machines.filter((m) => {
    const event = state.latest.get(m.mac);
    return event && event.stage !== "iscsi-logout";
  }).length;
  $("summary").textContent = `${state.machines.length} machines, ${booting} active since the server started`;
}

function updateMachine(mac) {
  const row = [...$("machines").tBodies[0].rows].find((r) => r.dataset.mac === mac);
  const machine = state.machines.find((m) => m.mac === mac);
  if (!row || !machine) return;
  const fresh = machineRow(machine);
  fresh.classList.add("flash");
  row.replaceWith(fresh);
}

// -- discovered ---------------------------------------------------------------------------------

function discoveredRow(found) {
  const hostname = el("input", { type: "text", placeholder: "hostname (optional)", size: 16 });
  const approve = el("button", {
    type: "button",
    class: "approve",
    text: "Approve",
    onclick: () => {
      const body = hostname.value.trim() ? { hostname: hostname.value.trim() } : {};
      act(`${found.mac} approved`, "POST", `/discovered/${encodeURIComponent(found.mac)}/approve`, body);
    },
  });
  return el(
    "tr",
    { dataset: { mac: found.mac } },
    el("td", { class: "mac", text: found.mac }),
    el("td", { class: "ip", text: found.last_ip ?? "" }),
    el("td", { text: when(found.first_seen) }),
    el("td", { text: when(found.last_seen) }),
    el("td", { text: String(found.count) }),
    el("td", {}, hostname, approve),
  );
}

function renderDiscovered(found) {
  $("discovered").tBodies[0].replaceChildren(...found.map(discoveredRow));
  $("no-discovered").hidden = found.length > 0;
}

// -- events -------------------------------------------------------------------------------------

function addToFeed(event) {
  const key = `${event.mac} ${event.stage} ${event.at}`;
  if (state.feedKeys.has(key)) return; // loaded from /boot-status and then streamed
  state.feedKeys.add(key);
  const machine = state.machines.find((m) => m.mac === event.mac);
  const who = machine ? machine.hostname : event.known ? event.mac : `${event.mac} (unknown)`;
  const item = el(
    "li",
    { class: event.known ? "" : "unknown" },
    el("span", { class: "time", text: new Date(event.at * 1000).toLocaleTimeString() }),
    el("span", { text: ` ${who} ${event.stage} ` }),
    el("span", { class: "detail", text: event.detail }),
  );
  const feed = $("feed");
  feed.prepend(item);
  while (feed.children.length > FEED_LIMIT) {
    feed.lastElementChild.remove();
  }
}

let discoveredReload = null;

function onBootEvent(event) {
  const current = state.latest.get(event.mac);
  if (!current || current.at <= event.at) {
    state.latest.set(event.mac, event);
    updateMachine(event.mac);
  }
  addToFeed(event);
  if (!event.known && discoveredReload === null) {
    // The recorder stores sightings about once a second: reload the list after that.
    discoveredReload = setTimeout(() => {
      discoveredReload = null;
      loadInventory();
    }, 1500);
  }
}

// -- loading, login -----------------------------------------------------------------------------

async function loadInventory() {
  try {
    const [machines, groups, found] = await Promise.all([
      api("GET", "/machines"),
      api("GET", "/groups"),
      api("GET", "/discovered"),
    ]);
    state.machines = machines;
    state.groups = new Map(groups.map((g) => [g.name, g]));
    renderMachines();
    renderDiscovered(found);
  } catch (error) {
    if (error instanceof Unauthorized) return logout(error.message);
    notify(error.message, true);
  }
}

async function loadStatus() {
  try {
    const status = await api("GET", "/boot-status?limit=100");
    for (const event of status.latest) {
      const current = state.latest.get(event.mac);
      if (!current || current.at <= event.at) state.latest.set(event.mac, event);
    }
    for (const event of status.recent) addToFeed(event);
    renderMachines();
  } catch (error) {
    if (error instanceof Unauthorized) return logout(error.message);
    notify(error.message, true);
  }
}

function setLink(linkState) {
  const link = $("link");
  link.dataset.state = linkState;
  link.textContent = linkState;
  if (linkState === "unauthorized") logout("the token was refused");
}

function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  state.abort = new AbortController();
  loadInventory();
  follow(
    "/events",
    state.token,
    {
      onFrame: (frame) => {
        if (frame.event === "boot") onBootEvent(JSON.parse(frame.data));
      },
      onOpen: loadStatus,
      onState: setLink,
    },
    state.abort.signal,
  );
  state.timer = setInterval(loadInventory, REFRESH_MS);
}

function logout(reason = "") {
  if (state.abort) state.abort.abort();
  clearInterval(state.timer);
  state.abort = null;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = reason;
  $("link").dataset.state = "offline";
  $("link").textContent = "offline";
}

$("login-form").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  const token = $("token").value.trim();
  // Checked once before it is kept, so a typo is reported here, not as a broken page.
  const response = await fetch("/machines", { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    $("login-error").textContent = response.status === 401 ? "unknown or revoked token" : `HTTP ${response.status}`;
    return;
  }
  $("token").value = "";
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
});
$("logout").addEventListener("click", () => logout());

if (state.token) start();
else logout();
