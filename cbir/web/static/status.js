// The status line (model; the indexing run now, with progress; the last run; the watcher's last batch
// of changes and retries) and the list of files that could not be read, with why (polls /api/info).
import { $, api, el } from "./api.js";

let onInfo = () => {}; // the page's reaction to each /api/info answer, given by startStatus

const time = (iso) => (iso ? iso.slice(11, 19) : "");

function duration(s) {
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${String(Math.round(s % 60)).padStart(2, "0")} s`;
}

function counted(n, word) {
  return `${n} ${word}`;
}

// One indexing run (the report of /api/info's indexing.last) in a few words.
export function describeRun(r) {
  const parts = [];
  if (r.added || r.updated || r.removed) {
    parts.push(counted(r.added, "added"), counted(r.updated, "changed"), counted(r.removed, "removed"));
  } else {
    parts.push("no changes");
  }
  const bad = r.skipped.length + r.known_bad;
  if (bad) parts.push(counted(bad, "could not be read"));
  return `${parts.join(", ")}, took ${duration(r.seconds)}`;
}

function describeIndexing(ix) {
  const parts = [];
  if (ix.state === "indexing") {
    let line = ix.total ? `indexing ${ix.done} / ${ix.total}` : "looking for new and changed images…";
    if (ix.total && ix.per_second > 0) line += ` (${ix.per_second.toFixed(1)} img/s`;
    if (ix.total && ix.per_second > 0) line += ix.left_s !== null ? `, about ${duration(ix.left_s)} left)` : ")";
    parts.push(line);
  } else if (ix.state === "failed") {
    parts.push(`indexing failed: ${ix.error}`);
  } else if (ix.last) {
    parts.push(`updated ${time(ix.finished)}: ${describeRun(ix.last)}`);
  }
  if (ix.change) {
    const c = ix.change;
    const seen = [];
    if (c.added) seen.push(`${c.added} new`);
    if (c.changed) seen.push(`${c.changed} changed`);
    if (c.removed) seen.push(`${c.removed} gone`);
    parts.push(`last change seen ${time(c.at)}: ${seen.join(", ")}`);
  }
  if (ix.retry) parts.push(`${ix.retry.files} could not be read for now; trying again in ${duration(ix.retry.in_s)}`);
  return parts;
}

function describe(info) {
  const parts = [`${info.images} images`];
  if (info.model === "loading") parts.push("loading the model… (browsing and “more like this” already work)");
  if (info.model === "failed") parts.push(`the model failed: ${info.model_error}`);
  if (info.indexing) parts.push(...describeIndexing(info.indexing));
  return parts.join(" · ");
}

function showBad(ix) {
  const bad = (ix && ix.bad) || [];
  const count = (ix && ix.bad_count) || bad.length;
  $("bad").hidden = count === 0;
  $("bad-count").textContent = String(count);
  const items = bad.map((b) =>
    el("li", {}, el("span", { className: "bad-path" }, b.path), `: ${b.reason}`,
      b.transient ? el("span", { className: "bad-retry" }, " (tried again on the next run)") : ""));
  if (count > bad.length) items.push(el("li", {}, `… and ${count - bad.length} more (cbir index --json lists them all)`));
  $("bad-list").replaceChildren(...items);
}

async function refreshInfo() {
  let info;
  try {
    info = await api("/api/info");
  } catch (e) {
    $("status").textContent = `server unreachable: ${e.message}`;
    setTimeout(refreshInfo, 3000);
    return;
  }
  $("dataset").textContent = info.dataset;
  $("status").textContent = describe(info);
  const ix = info.indexing;
  showBad(ix);
  onInfo(info);
  const busy = info.model === "loading" || (ix && ix.state === "indexing");
  setTimeout(refreshInfo, busy ? 1000 : 4000);
}

/** Starts polling; ``react(info)`` runs after each answer (e.g. to redraw a changed folder). */
export function startStatus(react) {
  onInfo = react;
  refreshInfo();
}

export { refreshInfo };
