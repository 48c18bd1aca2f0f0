// The status line: model, indexing progress, files that could not be read (polls /api/info).
import { $, api, el } from "./api.js";

let onInfo = () => {}; // the page's reaction to each /api/info answer, given by startStatus

function describe(info) {
  const parts = [`${info.images} images`];
  if (info.model === "loading") parts.push("loading the model… (browsing and “more like this” already work)");
  if (info.model === "failed") parts.push(`the model failed: ${info.model_error}`);
  const ix = info.indexing;
  if (ix && ix.state === "indexing") parts.push(`indexing ${ix.done} / ${ix.total || "?"}`);
  if (ix && ix.state === "failed") parts.push(`indexing failed: ${ix.error}`);
  if (ix && ix.bad && ix.bad.length) parts.push(`${ix.bad.length} files could not be read`);
  return parts.join(" · ");
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
  const bad = (ix && ix.bad) || [];
  $("bad").hidden = bad.length === 0;
  $("bad-list").replaceChildren(...bad.map((b) => el("li", {}, `${b.path}: ${b.reason}`)));
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
