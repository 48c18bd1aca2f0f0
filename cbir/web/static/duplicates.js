// The near-duplicates review: the groups the server made in the background, as cards (class
// "group"); the copy to keep marked (the server's --keep rule by default, changed by a click), the
// others selected for removal; one group or all of them moved to the server's trash folder (the
// same moves and log as `cbir duplicates --move-to`), and undone. Keyboard: see KEYS.
import { $, api, csrf, el, enc, show, showError } from "./api.js";

// the page's viewer over a list of paths; until it has one, the file in a new tab
let openViewer = (paths, index) => window.open(`/files/${enc(paths[index])}`, "_blank", "noopener");
const review = { data: null, keep: new Map(), remove: new Map(), skipped: new Set(), done: new Set(), current: 0 };
let polling = null;
const KEYS = "Keys: j / k next / previous group · 1-9 keep that copy · m move the others · s skip · c compare";

function size(bytes) {
  if (bytes === null || bytes === undefined) return "size unknown";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function scoreOf(group, path) {
  const member = group.members.find((m) => m.path === path);
  return member ? member.score : null;
}

function setButton(state) {
  const button = $("show-duplicates");
  button.hidden = state === "none";
  button.textContent = state === "computing" ? "Near-duplicates (computing…)" : "Near-duplicates";
}

/** Which groups are still to review (not moved, not skipped), in order. */
function open() {
  return (review.data ? review.data.groups : []).map((g, i) => i).filter((i) => !review.done.has(i));
}

function picks(indices) {
  return indices
    .filter((i) => !review.skipped.has(i) && !review.done.has(i))
    .map((i) => ({ keep: review.keep.get(i), remove: [...review.remove.get(i)] }))
    .filter((p) => p.remove.length > 0);
}

function member(group, i, path, index) {
  const kept = review.keep.get(i) === path;
  const img = el("img", { src: `/thumbs/${enc(path)}`, alt: path, loading: "lazy" });
  const view = el("button", { type: "button", className: "picture", title: `Open ${path}` }, img);
  view.addEventListener("click", () => openViewer(group.paths, index));
  const keep = el("input", { type: "radio", name: `keep-${i}`, checked: kept, ariaLabel: `Keep ${path}` });
  keep.addEventListener("change", () => choose(i, path));
  const remove = el("input", {
    type: "checkbox", checked: review.remove.get(i).has(path), disabled: kept, ariaLabel: `Remove ${path}`,
  });
  remove.addEventListener("change", () => {
    if (remove.checked) review.remove.get(i).add(path);
    else review.remove.get(i).delete(path);
    redraw(i);
  });
  const score = scoreOf(group, path);
  const facts = el(
    "div",
    { className: "facts" },
    el("a", { href: `/files/${enc(path)}`, target: "_blank", rel: "noopener", className: "path" }, path),
    el("span", {}, size(group.sizes ? group.sizes[index] : null)),
    el("span", {}, score === null ? "the group's reference" : `similarity ${score.toFixed(3)}`),
  );
  const choices = el(
    "div",
    { className: "choices" },
    el("label", {}, keep, ` Keep${index < 9 ? ` (${index + 1})` : ""}`),
    el("label", {}, remove, " Remove"),
  );
  const item = el("li", { className: kept ? "member kept" : "member" }, view);
  if (kept) item.append(el("strong", { className: "badge" }, "Kept copy"));
  item.append(facts, choices);
  item.dataset.path = path;
  return item;
}

function compareView(group, i) {
  const panel = el("div", { className: "compare" });
  const others = group.paths.filter((p) => p !== review.keep.get(i));
  const pick = (label, chosen) => {
    const select = el("select", { ariaLabel: label });
    for (const p of group.paths) select.append(el("option", { value: p, selected: p === chosen }, p));
    return select;
  };
  const a = pick("first picture to compare", review.keep.get(i));
  const b = pick("second picture to compare", others[0]);
  const sides = el("div", { className: "sides" });
  const draw = () => {
    sides.replaceChildren(
      ...[a.value, b.value].map((p) => {
        const img = el("img", { src: `/files/${enc(p)}`, alt: `compare: ${p}` });
        const caption = el("figcaption", {}, `${p} · ${size(group.sizes[group.paths.indexOf(p)])}`);
        img.addEventListener("load", () => caption.append(` · ${img.naturalWidth} × ${img.naturalHeight} px`));
        return el("figure", {}, img, caption);
      })
    );
  };
  a.addEventListener("change", draw);
  b.addEventListener("change", draw);
  draw();
  panel.append(el("div", { className: "pickers" }, a, " and ", b), sides);
  return panel;
}

function card(group, i) {
  const n = review.data.groups.length;
  const removing = review.remove.get(i).size;
  const title = el("h3", { id: `group-${i + 1}-title` }, `Group ${i + 1} of ${n}: ${group.paths.length} copies`);
  const members = el("ul", { className: "members" }, ...group.paths.map((p, k) => member(group, i, p, k)));
  const move = el("button", { type: "button", className: "move", disabled: removing === 0 },
    removing ? `Move ${removing} to the trash (m)` : "Nothing to move");
  move.addEventListener("click", () => resolve([i]));
  const skip = el("button", { type: "button", className: "skip" }, review.skipped.has(i) ? "Skipped (s)" : "Skip (s)");
  skip.addEventListener("click", () => skipGroup(i));
  const compare = el("button", { type: "button", className: "compare-button", ariaExpanded: "false" }, "Compare two (c)");
  const node = el("article", { className: review.skipped.has(i) ? "group skipped" : "group", tabIndex: -1 },
    title, members, el("div", { className: "actions" }, move, compare, skip));
  node.setAttribute("aria-labelledby", title.id);
  compare.addEventListener("click", () => toggleCompare(node, group, i));
  node.dataset.group = String(i + 1);
  return node;
}

function toggleCompare(node, group, i) {
  const open = node.querySelector(".compare");
  const button = node.querySelector(".compare-button");
  if (open) open.remove();
  else node.append(compareView(group, i));
  button.setAttribute("aria-expanded", String(!open));
}

function redraw(i) {
  const old = document.querySelector(`#groups .group[data-group="${i + 1}"]`);
  if (!old) return;
  const fresh = card(review.data.groups[i], i);
  const active = old.contains(document.activeElement) ? document.activeElement : null;
  old.replaceWith(fresh);
  if (active) { // the same control of the same member again, else the card
    const where = active.closest(".member");
    const same = where && fresh.querySelector(`.member[data-path="${CSS.escape(where.dataset.path)}"] ` +
      (active.type ? `input[type="${active.type}"]` : `.${active.className.split(" ")[0]}`));
    (same || fresh.querySelector(`button.${active.className.split(" ")[0]}`) || fresh).focus({ preventScroll: true });
  }
  summary();
}

function choose(i, path) {
  review.keep.set(i, path);
  review.remove.set(i, new Set(review.data.groups[i].paths.filter((p) => p !== path)));
  redraw(i);
}

function skipGroup(i) {
  if (review.skipped.has(i)) review.skipped.delete(i);
  else review.skipped.add(i);
  redraw(i);
  step(1);
}

function summary() {
  const left = open();
  const files = picks(left).reduce((n, p) => n + p.remove.length, 0);
  const data = review.data;
  $("dup-summary").textContent = left.length
    ? `${left.length} group(s) to review; ${files} file(s) selected to move to ${data.trash}.`
    : `No near-duplicates left among ${data.images} images.`;
  $("dup-resolve-all").disabled = files === 0;
}

function focusGroup(n) {
  const cards = [...document.querySelectorAll("#groups .group")];
  if (!cards.length) return;
  const index = Math.max(0, Math.min(cards.length - 1, n));
  review.current = index;
  cards.forEach((c, k) => c.toggleAttribute("aria-current", k === index));
  cards[index].focus({ preventScroll: true });
  cards[index].scrollIntoView({ block: "nearest" });
}

function step(delta) {
  const count = document.querySelectorAll("#groups .group").length;
  const next = Math.max(0, Math.min(count - 1, review.current + delta));
  focusGroup(next);
  location.hash = `#/duplicates?group=${next + 1}`; // the route: reload and Back come back here
}

function currentIndex() {
  const card = document.querySelectorAll("#groups .group")[review.current];
  return card ? parseInt(card.dataset.group, 10) - 1 : null;
}

function render(data, params, fresh = false) {
  const same = review.data && review.data.version === data.version;
  if (!same || fresh) {
    review.data = data;
    review.keep = new Map(data.groups.map((g, i) => [i, g.keep || g.representative]));
    review.remove = new Map(data.groups.map((g, i) => [i, new Set(g.paths.filter((p) => p !== review.keep.get(i)))]));
    review.skipped = new Set();
    review.done = new Set();
    $("groups").replaceChildren(...data.groups.map((g, i) => card(g, i)));
  }
  summary();
  const last = (data.moves || [])[0];
  if (last && !$("dup-undo").dataset.log) offerUndo(last, `Last move: ${last.moved} file(s) to ${last.folder}.`);
  const wanted = parseInt(params.get("group") || "1", 10);
  focusGroup(Number.isFinite(wanted) ? wanted - 1 : 0);
}

function computing(message) {
  $("dup-summary").textContent = message;
  setButton("computing");
  clearTimeout(polling);
  polling = setTimeout(() => { if (!$("duplicates").hidden) showDuplicates(new URLSearchParams()); }, 1000);
}

/** Shows the review (route #/duplicates, #/duplicates?group=N). */
export async function showDuplicates(params = new URLSearchParams()) {
  if (!$("duplicates").hidden && review.data && params.has("group")) { // moving within the review
    focusGroup(parseInt(params.get("group"), 10) - 1 || 0);
    return;
  }
  show("duplicates");
  let data;
  try {
    data = await api("/api/duplicates");
  } catch (e) {
    showError(e.message);
    return;
  }
  showError("");
  if (data.state !== "ready") {
    computing("Finding near-duplicates… (computing; the groups appear here when ready)");
    return;
  }
  setButton("ready");
  render(data, params);
}

function offerUndo(move, text) {
  $("dup-undo").dataset.log = move.log;
  $("dup-undo-text").textContent = text;
  $("dup-undo").hidden = false;
}

async function post(url, body) {
  const headers = { "Content-Type": "application/json", "X-CSRF-Token": await csrf() };
  return api(url, { method: "POST", body: JSON.stringify(body), headers });
}

/** How many indexing runs the server finished (null: it has no indexer). */
async function indexRuns() {
  const info = await api("/api/info");
  return info.indexing ? info.indexing.runs : null;
}

async function resolve(indices) {
  const chosen = picks(indices);
  if (!chosen.length) return;
  try {
    const runs = await indexRuns();
    const moved = await post("/api/duplicates/move", { version: review.data.version, groups: chosen });
    const kept = moved.skipped.length ? ` ${moved.skipped.length} left in place: ${moved.skipped.join("; ")}` : "";
    if (!moved.moved) {
      showError(`Nothing was moved.${kept}`);
      return;
    }
    offerUndo(moved, `Moved ${moved.moved} file(s) to ${moved.folder}.${kept}`);
    for (const i of indices) if (!review.skipped.has(i)) review.done.add(i);
    for (const i of review.done) {
      const node = document.querySelector(`#groups .group[data-group="${i + 1}"]`);
      if (node) node.remove();
    }
    showError("");
    summary();
    focusGroup(review.current);
    waitForNewGroups(runs);
  } catch (e) {
    showError(e.message);
  }
}

/** Redraws the review once the server re-indexed after a move or an undo (an indexing run after
 * ``runs`` finished) and grouped that version (after an undo it may be one seen before). */
function waitForNewGroups(runs) {
  const check = async () => {
    if ($("duplicates").hidden) return;
    try {
      const now = await indexRuns();
      if (runs === null || now > runs) {
        const data = await api("/api/duplicates");
        if (data.state === "ready") {
          setButton("ready");
          render(data, new URLSearchParams(), true);
          return;
        }
      }
      setButton("computing");
    } catch (e) {
      showError(e.message);
      return;
    }
    clearTimeout(polling);
    polling = setTimeout(check, 700);
  };
  clearTimeout(polling);
  polling = setTimeout(check, 300);
}

async function undo() {
  const log = $("dup-undo").dataset.log;
  if (!log) return;
  try {
    const runs = await indexRuns();
    const done = await post("/api/duplicates/undo", { log });
    const problems = done.problems.length ? ` Not restored: ${done.problems.join("; ")}` : "";
    $("dup-undo").hidden = true;
    delete $("dup-undo").dataset.log;
    $("dup-summary").textContent = `Put back ${done.restored} file(s); re-indexing…${problems}`;
    if (done.restored) waitForNewGroups(runs);
  } catch (e) {
    showError(e.message);
  }
}

function confirmAll() {
  const chosen = picks(open());
  const files = chosen.reduce((n, p) => n + p.remove.length, 0);
  if (!files) return;
  $("dup-confirm-text").textContent =
    `Move ${files} file(s) from ${chosen.length} group(s) to a new folder in ${review.data.trash}? ` +
    "Undo puts them back.";
  $("dup-confirm").showModal();
  $("dup-confirm-move").focus();
}

function onKey(e) {
  if ($("duplicates").hidden || !review.data) return;
  if ($("dup-confirm").open) {
    if (e.key === "Escape") e.stopPropagation(); // the dialog closes; the view stays
    return;
  }
  const tag = e.target.tagName;
  if (tag === "SELECT" || tag === "TEXTAREA" || (tag === "INPUT" && !["radio", "checkbox"].includes(e.target.type))) return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const i = currentIndex();
  const group = i === null ? null : review.data.groups[i];
  const k = e.key;
  if (k === "j" || k === "n") step(1);
  else if (k === "k" || k === "p") step(-1);
  else if (group && k >= "1" && k <= "9" && parseInt(k, 10) <= group.paths.length) choose(i, group.paths[parseInt(k, 10) - 1]);
  else if (group && k === "s") skipGroup(i);
  else if (group && k === "m") resolve([i]);
  else if (group && k === "c") {
    const node = document.querySelector(`#groups .group[data-group="${i + 1}"]`);
    toggleCompare(node, group, i);
  } else return;
  e.preventDefault();
  e.stopPropagation();
}

/** Sets the button from /api/info's ``duplicates`` (null: this server does not group), and looks
 * again while the groups are being made. */
export async function probeDuplicates() {
  let state = "computing";
  try {
    const info = await api("/api/info");
    state = info.duplicates ? info.duplicates.state : "none";
  } catch (e) {
    // the server is unreachable for a moment: keep offering the review, look again
  }
  setButton(state === "ready" ? "ready" : state);
  if (state === "computing") setTimeout(probeDuplicates, 2000);
}

/** Wires the view to the page: ``viewer(paths, index)`` opens the page's viewer over a list (a
 * file in a new tab until the page has one). The page's ``tile`` is not used: a card's members carry their own
 * controls (keep, remove) instead of the tile's "more like this". */
export function mountDuplicates(tile, viewer) {
  if (viewer) openViewer = viewer;
  $("dup-keys").textContent = KEYS;
  $("show-duplicates").addEventListener("click", () => {
    if (location.hash.startsWith("#/duplicates")) showDuplicates(new URLSearchParams());
    else location.hash = "#/duplicates";
  });
  $("dup-resolve-all").addEventListener("click", confirmAll);
  $("dup-undo-button").addEventListener("click", undo);
  $("dup-confirm-cancel").addEventListener("click", () => $("dup-confirm").close());
  $("dup-confirm-move").addEventListener("click", () => {
    $("dup-confirm").close();
    resolve(open());
  });
  document.addEventListener("keydown", onKey, true);
  probeDuplicates();
}
