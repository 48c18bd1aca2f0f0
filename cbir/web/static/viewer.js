// The viewer: one picture large (EXIF-upright: browsers apply the orientation), next/previous through
// the list it was opened on (arrow keys, swipe), its details, "more like this" and "open file".
// It knows nothing of routes: app.js opens it for #/view and is told of every move.
import { $, api, el, enc, encName } from "./api.js";
import { formatBytes, formatTaken } from "./format.js";

const viewer = { items: [], index: 0, hooks: null, open: false, asked: 0 };

/** Wires the viewer: ``hooks.move(item)`` (next/previous), ``hooks.close()``, ``hooks.like(path)``. */
export function mountViewer(hooks) {
  viewer.hooks = hooks;
  $("viewer-close").addEventListener("click", () => hooks.close());
  $("viewer-prev").addEventListener("click", () => step(-1));
  $("viewer-next").addEventListener("click", () => step(1));
  $("viewer-like").addEventListener("click", () => hooks.like(current().path));
  document.addEventListener("keydown", (e) => {
    // wherever the focus is (a click on the picture leaves it on the page's body)
    if (!viewer.open || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "Escape") { e.preventDefault(); hooks.close(); }
    else if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
  });
  let start = null;
  const stage = $("viewer-stage");
  stage.addEventListener("touchstart", (e) => { start = e.changedTouches[0]; }, { passive: true });
  stage.addEventListener("touchend", (e) => {
    if (!start) return;
    const end = e.changedTouches[0];
    const dx = end.clientX - start.clientX;
    const dy = end.clientY - start.clientY;
    start = null;
    if (Math.abs(dx) > 40 && Math.abs(dx) > 1.5 * Math.abs(dy)) step(dx < 0 ? 1 : -1);
  });
}

function current() {
  return viewer.items[viewer.index];
}

function step(delta) {
  const next = viewer.index + delta;
  if (next < 0 || next >= viewer.items.length) return;
  viewer.hooks.move(viewer.items[next]);
}

/** The path shown now (null when closed): the page puts the focus back on its tile. */
export function viewedPath() {
  return viewer.open ? current().path : null;
}

export function viewerIsOpen() {
  return viewer.open;
}

/** Shows ``items[index]`` (items: ``{path, score?, taken?, bytes?}``) over the page. */
export function showViewer(items, index) {
  const wasOpen = viewer.open;
  Object.assign(viewer, { items, index, open: true });
  const item = current();
  const name = item.path.split("/").pop();
  $("viewer-title").textContent = name;
  $("viewer-count").textContent = items.length > 1 ? `${index + 1} of ${items.length}` : "";
  $("viewer-img").src = `/files/${enc(item.path)}`;
  $("viewer-img").alt = item.path;
  $("viewer-open").href = `/files/${enc(item.path)}`;
  $("viewer-prev").disabled = index <= 0;
  $("viewer-next").disabled = index >= items.length - 1;
  details(item, null);
  for (const id of ["page-header", "page-main"]) $(id).inert = true;
  $("viewer").hidden = false;
  document.body.classList.add("viewing");
  if (!wasOpen || !$("viewer").contains(document.activeElement)) $("viewer-close").focus();
  for (const near of [items[index - 1], items[index + 1]]) {
    if (near) new Image().src = `/files/${enc(near.path)}`; // the neighbours' files, preloaded
  }
  const asked = ++viewer.asked;
  api(`/api/image?path=${encName(item.path)}`)
    .then((facts) => { if (asked === viewer.asked) details(item, facts); })
    .catch((e) => { if (asked === viewer.asked) details(item, { error: e.message }); });
}

function details(item, facts) {
  const f = facts || {};
  const folder = item.path.includes("/") ? item.path.slice(0, item.path.lastIndexOf("/")) : "";
  const size = f.width ? `${f.width} × ${f.height} px` : facts ? "unknown" : "…";
  const rows = [
    ["Path", item.path],
    ["Folder", folder ? `${folder}/` : "the top folder"],
    ["Date taken", formatTaken(f.taken !== undefined ? f.taken : item.taken) || "unknown"],
    ["Pixel size", size],
    ["File size", formatBytes(f.bytes !== undefined ? f.bytes : item.bytes) || "unknown"],
  ];
  if (item.score !== undefined) rows.push(["Score", item.score.toFixed(3)]);
  if (f.error) rows.push(["Problem", f.error]);
  $("viewer-details").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

export function hideViewer() {
  if (!viewer.open) return;
  viewer.open = false;
  viewer.asked++;
  $("viewer").hidden = true;
  $("viewer-img").removeAttribute("src");
  for (const id of ["page-header", "page-main"]) $(id).inert = false;
  document.body.classList.remove("viewing");
}
