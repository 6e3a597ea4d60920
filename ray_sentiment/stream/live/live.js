// Polls /v1/live and draws, per key, the share of each label over the last windows (the one
// filling in drawn lighter), the counts, and the alerts. Text from comments goes in as text only.
"use strict";
const refreshMs = Number(document.body.dataset.refreshMs) || 1000;
const colours = { negative: "var(--negative)", neutral: "var(--neutral)", positive: "var(--positive)" };
const extra = ["#4c78a8", "#f58518", "#b279a2", "#72b7b2", "#eeca3b"];
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function colour(label, labels) {
  return colours[label] || extra[labels.indexOf(label) % extra.length];
}

function utc(ms) {
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
}

function span(seconds) {
  for (const [unit, size] of [["day", 86400], ["h", 3600], ["min", 60]]) {
    if (seconds % size === 0) return `${seconds / size}-${unit}`;
  }
  return `${seconds}-s`;
}

function chart(key, data) {
  // One stacked bar per window: the share of each label; bar opacity shows how many comments.
  const svg = document.createElementNS(SVG, "svg");
  const windows = key.windows, n = data.windowCount, width = 100, height = 40;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const most = Math.max(...windows.map(w => total(w.counts)), 1);
  const slot = width / n, starts = data.starts;
  for (const w of windows) {
    const i = starts.indexOf(w.start_ms), sum = total(w.counts);
    let y = height;
    for (const label of data.labels) {
      const h = sum ? (w.counts[label] || 0) / sum * height : 0;
      const bar = document.createElementNS(SVG, "rect");
      y -= h;
      bar.setAttribute("x", i * slot + slot * 0.1);
      bar.setAttribute("width", slot * 0.8);
      bar.setAttribute("y", y);
      bar.setAttribute("height", h);
      bar.setAttribute("fill", colour(label, data.labels));
      bar.setAttribute("opacity", w.start_ms === data.watermark_ms ? 0.45 : 0.35 + 0.65 * sum / most);
      const tip = document.createElementNS(SVG, "title");
      tip.textContent = `${utc(w.start_ms)} UTC: ${label} ${w.counts[label] || 0} of ${sum}`;
      bar.appendChild(tip);
      svg.appendChild(bar);
    }
  }
  return svg;
}

function total(counts) {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

function keyCard(key, data, alertsById) {
  const card = el("section", { "data-key": key.key });
  if (key.alerts.length) card.classList.add("alerting");
  card.appendChild(el("h2", {}, key.key || "all comments"));
  card.appendChild(chart(key, data));
  const axis = el("div", { class: "axis" });
  axis.appendChild(el("span", {}, utc(data.starts[0])));
  axis.appendChild(el("span", {}, `${utc(data.starts[data.starts.length - 1])} UTC`));
  card.appendChild(axis);
  const table = el("table");
  const head = el("tr");
  head.appendChild(el("th", {}, ""));
  for (const label of data.labels) head.appendChild(el("th", {}, label));
  head.appendChild(el("th", {}, "total"));
  table.appendChild(head);
  const current = key.windows.find(w => w.start_ms === data.watermark_ms);
  const rows = [[`${data.windowCount} windows`, key.counts, "shown"]];
  if (current) rows.push(["filling in", current.counts, "current"]);
  for (const [name, counts, kind] of rows) {
    const row = el("tr", { "data-row": kind });
    row.appendChild(el("td", {}, name));
    for (const label of data.labels) row.appendChild(el("td", { "data-count": label }, String(counts[label] || 0)));
    row.appendChild(el("td", { "data-count": "total" }, String(total(counts))));
    table.appendChild(row);
  }
  card.appendChild(table);
  for (const id of key.alerts) card.appendChild(alertBox(alertsById[id]));
  return card;
}

function alertBox(alert) {
  const box = el("div", { class: "alert", "data-alert": alert.id });
  box.appendChild(el("strong", {}, `${alert.label} ${Math.round(alert.share * 100)}%`));
  box.appendChild(document.createTextNode(
    ` of ${alert.total} in the window from ${utc(alert.window_start_ms)} UTC, against ` +
    `${Math.round(alert.baseline * 100)}% before (z ${alert.z.toFixed(1)})`));
  if (alert.texts.length) {
    const list = el("ul");
    for (const text of alert.texts) list.appendChild(el("li", {}, text));
    box.appendChild(list);
  }
  return box;
}

function legend(labels) {
  const box = el("div", { class: "legend" });
  for (const label of labels) {
    const item = el("span");
    item.appendChild(el("span", { class: "swatch", style: `background:${colour(label, labels)}` }));
    item.appendChild(document.createTextNode(label));
    box.appendChild(item);
  }
  return box;
}

function render(data) {
  const main = document.getElementById("keys");
  for (const old of main.querySelectorAll("section[data-key], .legend, p.empty")) old.remove();
  data.starts = [...new Set(data.keys.flatMap(k => k.windows.map(w => w.start_ms)))].sort((a, b) => a - b);
  data.windowCount = Math.max(data.starts.length, 1);
  const alertsById = Object.fromEntries(data.alerts.map(a => [a.id, a]));
  document.getElementById("stream").textContent = `${data.output_stream}, ${span(data.window_s)} windows`;
  const t = data.totals;
  document.getElementById("totals").textContent =
    `scored ${t.scored.toLocaleString()} · dead-lettered ${t.dead_lettered} · late ${t.late} · alerts ${t.alerts}`;
  document.getElementById("totals").dataset.scored = t.scored;
  if (!data.keys.length) main.appendChild(el("p", { class: "empty" }, "no counts yet"));
  else main.appendChild(legend(data.labels));
  for (const key of data.keys) main.appendChild(keyCard(key, data, alertsById));
  const alerts = document.getElementById("alerts"), list = document.getElementById("alert-list");
  list.replaceChildren(...data.alerts.map(a => {
    const box = alertBox(a);
    box.prepend(el("strong", {}, `${a.key || "all comments"}: `));
    return box;
  }));
  alerts.hidden = !data.alerts.length;
}

async function poll() {
  const status = document.getElementById("status");
  const key = sessionStorage.getItem("ray-sentiment-key");
  try {
    const answer = await fetch("/v1/live", { headers: key ? { Authorization: `Bearer ${key}` } : {}, cache: "no-store" });
    if (answer.status === 401) {
      document.getElementById("key-form").hidden = false;
      status.textContent = "needs the API key";
      return;
    }
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.detail || answer.statusText);
    render(data);
    status.textContent = `updated ${new Date(data.read_at_ms).toLocaleTimeString()}`;
    status.classList.remove("stale");
  } catch (error) {
    status.textContent = `not updating: ${error.message}`;
    status.classList.add("stale");
  } finally {
    setTimeout(poll, refreshMs);
  }
}

document.getElementById("key-form").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem("ray-sentiment-key", document.getElementById("key").value);
  document.getElementById("key-form").hidden = true;
});
poll();
