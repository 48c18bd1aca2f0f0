// cbir's page: the shell, its router and its views (browse, results). Uses only the JSON API.
//
// Every view is a hash route, built and parsed only here, so Back/forward, reload and a copied link
// restore it: #/browse?dir=D&page=N&sort=name|date&since=&until=, #/like?path=P&k=K&under=D&since=
// &until=&sort=score|date&min=S, #/text?q=WORDS&k=... (the same filters), #/upload?id=N&k=... (the
// image lives only as long as the page: after a reload the page says so), #/view?path=P (the viewer
// over the list it was opened on), #/duplicates[?group=N] (duplicates.js's view).
import { $, api, csrf, el, enc, encName, show, showError } from "./api.js";
import { mountDuplicates, showDuplicates } from "./duplicates.js";
import { WEAK, decodeName, formatTaken } from "./format.js";
import { refreshInfo, startStatus } from "./status.js";
import { hideViewer, mountViewer, showViewer, viewedPath, viewerIsOpen } from "./viewer.js";

const MAX_K = 500;
const LIST_KEY = "cbir.list"; // sessionStorage: the list the viewer walks, kept across a reload
const state = {
  route: { name: "browse", params: {} },
  depth: 0, // how many entries of this tab's history are the page's own, before this one
  list: { hash: "", items: [] }, // the last list drawn: the viewer's next/previous walk it
  browse: { dir: "", page: 1, pages: 1 },
  images: -1,
  uploads: new Map(), // id -> {file, url, results}: an upload lives as long as the page
  nextUpload: 1,
  drawn: 0, // increases with every render: an answer for an older one is dropped
  drawing: "", // the hash of the list view being drawn
  shown: null, // the hash of the list view drawn last (under the viewer)
  viewerDepth: -1, // the history depth of the viewer's entry when the page itself opened it
  focusPath: null, // the picture the viewer showed last: its tile gets the focus back
  restoreScroll: null, // after Back/forward: the scroll position the list had when it was left
};

/** The focus on the tile of the picture the viewer showed last, else on ``fallback``. */
function refocus(grid, fallback) {
  const path = state.focusPath;
  state.focusPath = null;
  const tiles = [...document.querySelectorAll(`#${grid} li.tile`)];
  const target = (path && tiles.find((t) => t.dataset.path === path)) || fallback;
  const button = target && target.querySelector("button.more");
  if (button && !viewerIsOpen()) button.focus({ preventScroll: !path });
}

// ---- routes -------------------------------------------------------------------------------------

function parseHash(hash) {
  if (hash.startsWith("#text=")) return { name: "text", params: { q: decodeName(hash.slice(6)) } }; // older links
  const text = hash.replace(/^#\/?/, "");
  const [name, query = ""] = text.split("?", 2);
  const params = {};
  for (const part of query.split("&")) {
    if (!part) continue;
    const at = part.indexOf("=");
    const key = at < 0 ? part : part.slice(0, at);
    params[key] = at < 0 ? "" : decodeName(part.slice(at + 1));
  }
  return { name: name || "browse", params };
}

function buildHash(name, params) {
  const query = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => `${k}=${encName(String(v))}`)
    .join("&");
  return `#/${name}${query ? `?${query}` : ""}`;
}

/** Goes to a route: a new history entry (or, with ``replace``, this one changed), then draws it. */
function go(name, params, replace = false) {
  const hash = buildHash(name, params);
  if (hash === location.hash) return render();
  if (replace) {
    history.replaceState({ depth: state.depth }, "", hash);
  } else {
    history.replaceState({ ...history.state, scroll: window.scrollY }, ""); // where Back will return to
    history.pushState({ depth: ++state.depth }, "", hash);
  }
  state.restoreScroll = null;
  return render();
}

function onHashChange() {
  // Back/forward, a link, or another module's `location.hash = ...`
  if (!history.state) history.replaceState({ depth: state.depth + 1 }, "");
  state.depth = history.state.depth;
  state.restoreScroll = typeof history.state.scroll === "number" ? history.state.scroll : null;
  render();
}

/** Back (or forward) to a list: where it was scrolled to when it was left. */
function restoreScroll() {
  if (state.restoreScroll === null || viewerIsOpen()) return;
  window.scrollTo(0, state.restoreScroll);
  state.restoreScroll = null;
}

function back() {
  if (viewerIsOpen()) return closeViewer();
  if (state.depth > 0) return history.back();
  const { name, params } = state.route;
  const dir = name === "browse" ? params.dir || "" : null;
  if (dir) return go("browse", { dir: dir.includes("/") ? dir.slice(0, dir.lastIndexOf("/")) : "" });
  return go("browse", {}, name === "browse");
}

// ---- the filters of the header ------------------------------------------------------------------

/** The k typed, or null after saying why it is refused (never changed silently). */
function chosenK() {
  const text = $("k").value.trim();
  const value = Number(text);
  const ok = /^\d+$/.test(text) && value >= 1 && value <= MAX_K;
  $("k").setAttribute("aria-invalid", String(!ok));
  if (!ok) showError(`k must be a whole number from 1 to ${MAX_K} (got “${text}”); nothing was searched`);
  return ok ? value : null;
}

function dates() {
  return { since: $("since").value, until: $("until").value };
}

function searchParams(extra) {
  const k = chosenK();
  if (k === null) return null;
  const under = $("restrict").checked && state.browse.dir ? state.browse.dir : "";
  const sort = $("sort-results").value === "date" ? "date" : "";
  return { ...extra, k, under, ...dates(), sort, min: $("min").value };
}

function filterQuery(params) {
  let query = `&k=${encName(params.k || "18")}`;
  for (const key of ["under", "since", "until"]) if (params[key]) query += `&${key}=${encName(params[key])}`;
  return query;
}

function syncControls(params) {
  // the header and toolbars show the route's own settings (after a reload, Back, a shared link)
  // (not a field being typed in: its next change makes the next view)
  const set = (id, value) => { if (document.activeElement !== $(id)) $(id).value = value; };
  if (params.k) set("k", params.k);
  $("k").setAttribute("aria-invalid", "false");
  set("since", params.since || "");
  set("until", params.until || "");
  if (params.under !== undefined) $("restrict").checked = Boolean(params.under);
}

// ---- tiles --------------------------------------------------------------------------------------

/** One picture: its thumbnail (a click: more like it), its name (opens the viewer), its date, and
 * its score drawn as a bar (weak matches faded). ``info``: {label, taken} where known. */
function tile(path, score, info = {}) {
  const img = el("img", { src: `/thumbs/${enc(path)}`, alt: path, loading: "lazy" });
  const more = el("button", { type: "button", className: "more", title: `More like ${path}` }, img);
  more.addEventListener("click", () => like(path));
  const name = el("a", { href: buildHash("view", { path }), className: "name", title: "View larger" },
    info.label || path);
  name.addEventListener("click", (e) => {
    e.preventDefault();
    openViewerOn(path);
  });
  const meta = el("div", { className: "meta" }, name);
  if (info.taken) meta.append(el("div", { className: "taken" }, formatTaken(info.taken)));
  if (score !== undefined) {
    const bar = el("meter", { min: 0, max: 1, low: WEAK, high: 0.8, optimum: 1, value: Math.max(0, score) });
    bar.setAttribute("aria-label", `score ${score.toFixed(3)}`);
    meta.append(el("div", { className: "score" }, bar, ` ${score.toFixed(3)}`));
  }
  const item = el("li", { className: score !== undefined && score < WEAK ? "tile weak" : "tile" }, more, meta);
  item.dataset.path = path;
  return item;
}

function storedList() {
  try {
    const list = JSON.parse(sessionStorage.getItem(LIST_KEY) || "null");
    if (list && typeof list.hash === "string" && Array.isArray(list.items)) return list;
  } catch (e) {
    // unreadable: start without one
  }
  return { hash: "", items: [] };
}

/** The list just drawn (the view at ``state.drawing``), for the viewer, also after a reload. */
function remember(items, hash = state.drawing) {
  state.list = { hash, items };
  state.shown = state.drawing;
  try {
    sessionStorage.setItem(LIST_KEY, JSON.stringify(state.list));
  } catch (e) {
    // storage full or off: the viewer then walks only what this page drew
  }
}

// ---- views --------------------------------------------------------------------------------------

async function showBrowse(params, drawn) {
  const page = Math.max(1, parseInt(params.page || "1", 10) || 1);
  const sort = params.sort === "date" ? "date" : "name";
  let query = `/api/browse?dir=${encName(params.dir || "")}&page=${page}&sort=${sort}`;
  if (params.since) query += `&since=${encName(params.since)}`;
  if (params.until) query += `&until=${encName(params.until)}`;
  const data = await api(query);
  if (drawn !== state.drawn) return;
  showError("");
  Object.assign(state.browse, { dir: data.dir, page: data.page, pages: data.pages, sort });
  $("sort-browse").value = sort;
  const keep = { sort: sort === "date" ? "date" : "", since: params.since, until: params.until };
  const link = (label, dir) => {
    const a = el("a", { href: buildHash("browse", { dir, ...keep }) }, label);
    a.addEventListener("click", (e) => { e.preventDefault(); go("browse", { dir, ...keep }); });
    return a;
  };
  const parts = data.dir ? data.dir.split("/") : [];
  $("crumbs").replaceChildren(link("all images", ""));
  parts.forEach((part, i) => $("crumbs").append(" / ", link(part, parts.slice(0, i + 1).join("/"))));
  $("folders").replaceChildren(
    ...data.folders.map((f) => el("li", {}, link(`${f.name}/ (${f.images})`, f.path)))
  );
  const prefix = data.dir ? `${data.dir}/` : "";
  $("grid").replaceChildren(
    ...data.images.map((im) => tile(im.path, undefined, { label: im.path.slice(prefix.length), taken: im.taken }))
  );
  remember(data.images.map((im) => ({ path: im.path, taken: im.taken, bytes: im.bytes })));
  const dated = params.since || params.until ? " taken in these dates" : "";
  $("page").textContent = data.total
    ? `page ${data.page} of ${data.pages} (${data.total} here${dated})`
    : `no images here${dated}`;
  $("prev").disabled = data.page <= 1;
  $("next").disabled = data.page >= data.pages;
  $("restrict-dir").textContent = data.dir ? `${data.dir}/` : "/";
  show("browse");
  if (state.focusPath) refocus("grid", null);
  restoreScroll();
}

function ordered(results, params) {
  const min = params.min === undefined || params.min === "" ? null : Number(params.min);
  let items = min === null || !Number.isFinite(min) ? results : results.filter((r) => r.score >= min);
  if (params.sort === "date") {
    items = [...items].sort((a, b) => {
      if (!a.taken || !b.taken) return a.taken ? -1 : b.taken ? 1 : b.score - a.score;
      return a.taken < b.taken ? 1 : a.taken > b.taken ? -1 : b.score - a.score;
    });
  }
  return { items, min };
}

function drawResults(data, params, queryNode) {
  showError("");
  const { items, min } = ordered(data.results, params);
  $("sort-results").value = params.sort === "date" ? "date" : "score";
  if (document.activeElement !== $("min")) $("min").value = params.min || "";
  const parts = [`${data.results.length} results in ${data.took_ms} ms`];
  if (min !== null) parts.push(`${items.length} scoring at least ${min}`);
  if (params.sort === "date") parts.push("newest first");
  if (data.under) parts.push(`only in ${data.under}/`);
  if (data.since || data.until) parts.push(`taken ${data.since || "…"} to ${data.until || "…"}`);
  $("query").replaceChildren(
    queryNode,
    el("span", {}, `${parts.join(" · ")}. Click a picture for more like it, its name to view it.`)
  );
  $("result-grid").replaceChildren(...items.map((r) => tile(r.path, r.score, { taken: r.taken })));
  remember(items.map((r) => ({ path: r.path, score: r.score, taken: r.taken, bytes: r.bytes })));
  show("results");
  window.scrollTo(0, 0);
  refocus("result-grid", document.querySelector("#result-grid li.tile"));
  restoreScroll();
}

async function showLike(params, drawn) {
  const data = await api(`/api/search?like=${encName(params.path || "")}${filterQuery(params)}`);
  if (drawn !== state.drawn) return;
  const path = data.query.like;
  drawResults(data, params, el("img", { src: `/thumbs/${enc(path)}`, alt: `query: ${path}` }));
}

async function showText(params, drawn) {
  $("text").value = params.q || "";
  const data = await api(`/api/search?text=${encodeURIComponent(params.q || "")}${filterQuery(params)}`);
  if (drawn !== state.drawn) return;
  // how the words were matched (a text-image model's text tower, or the index's labels): the
  // results of the two mean different things, so the page says which
  const by = data.query.by ? el("span", { className: "by" }, data.query.by) : "";
  drawResults(data, params, el("span", { className: "words" }, el("strong", {}, `“${data.query.text}”`), by));
}

async function showUpload(params, drawn) {
  const upload = state.uploads.get(params.id);
  if (!upload) {
    $("query").replaceChildren(el("span", {}, "An uploaded image is kept only while the page is open: " +
      "drop, paste or choose it again to search with it."));
    $("result-grid").replaceChildren();
    remember([]);
    show("results");
    return;
  }
  const key = filterQuery(params);
  if (!upload.results.has(key)) {
    const form = new FormData();
    form.append("file", upload.file, upload.file.name || "pasted image");
    $("status").textContent = `Searching with ${upload.file.name || "the pasted image"}…`;
    const headers = { "X-CSRF-Token": await csrf() };
    upload.results.set(key, await api(`/api/search?${key.slice(1)}`, { method: "POST", body: form, headers }));
    refreshInfo();
  }
  if (drawn !== state.drawn) return;
  drawResults(upload.results.get(key), params, el("img", { src: upload.url, alt: `query: ${upload.file.name}` }));
}

function showView(params) {
  const path = params.path || "";
  let { items } = state.list;
  if (!items.some((i) => i.path === path)) items = [{ path }];
  showViewer(items, items.findIndex((i) => i.path === path));
}

const VIEWS = {
  browse: showBrowse,
  like: showLike,
  text: showText,
  upload: showUpload,
  duplicates: (params) => showDuplicates(new URLSearchParams(params)),
};

async function render() {
  const route = parseHash(location.hash);
  const drawn = ++state.drawn;
  state.route = route;
  $("back").hidden = route.name === "browse" && !route.params.dir;
  if (route.name === "view") {
    if (state.shown !== state.list.hash) {
      // opened directly (a reload, a link): the list it came from is drawn below it first
      const from = parseHash(state.list.hash);
      if (state.list.hash && from.name !== "view" && from.name !== "upload" && VIEWS[from.name]) {
        state.drawing = state.list.hash;
        try {
          await VIEWS[from.name](from.params, drawn);
        } catch (e) {
          // the viewer still shows the picture
        }
      }
    }
    if (drawn === state.drawn) showView(route.params);
    return;
  }
  hideViewer();
  state.drawing = location.hash || "#/browse";
  syncControls(route.params);
  const view = VIEWS[route.name];
  if (!view) {
    showError(`no such view: ${route.name}`);
    return;
  }
  try {
    await view(route.params, drawn);
  } catch (e) {
    if (drawn === state.drawn) showError(e.message);
  }
}

// ---- actions ------------------------------------------------------------------------------------

function like(path) {
  const params = searchParams({ path });
  if (params) go("like", params);
}

function words(text) {
  if (!text.trim()) return;
  const params = searchParams({ q: text });
  if (params) go("text", params);
}

function upload(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name} is not an image`);
    return;
  }
  const params = searchParams({});
  if (!params) return;
  const id = String(state.nextUpload++);
  state.uploads.set(id, { file, url: URL.createObjectURL(file), results: new Map() });
  go("upload", { id, ...params });
}

function openViewerOn(path) {
  if (!state.list.items.some((i) => i.path === path)) remember([{ path }], location.hash);
  go("view", { path });
  state.viewerDepth = state.depth; // next/previous replace this entry: closing goes back past it
}

/** The viewer over ``paths`` at ``index`` (duplicates.js opens it on a group's members). */
function openViewer(paths, index) {
  remember(paths.map((path) => ({ path })), location.hash);
  go("view", { path: paths[index] });
  state.viewerDepth = state.depth;
}

function closeViewer() {
  state.focusPath = viewedPath();
  if (state.depth > 0 && state.viewerDepth === state.depth) return history.back();
  const from = state.list.hash && !state.list.hash.startsWith("#/view") ? state.list.hash : "#/browse";
  history.replaceState({ depth: state.depth }, "", from);
  return render();
}

function turnPage(delta) {
  const b = state.browse;
  const page = b.page + delta;
  if (page < 1 || page > b.pages) return;
  go("browse", { ...state.route.params, dir: b.dir, page });
}

function refilter() {
  // new dates or order: the same view again with them (a new history entry: Back undoes it)
  const { name, params } = state.route;
  if (name === "browse") {
    go("browse", { dir: state.browse.dir, ...dates(), sort: $("sort-browse").value === "date" ? "date" : "" });
  } else if (["like", "text", "upload"].includes(name)) {
    const sort = $("sort-results").value === "date" ? "date" : "";
    go(name, { ...params, ...dates(), sort, min: $("min").value });
  }
}

/** The search box's hint: free text on an index of a text-image model, ImageNet labels otherwise. */
function describeWords(features) {
  const joint = Boolean(features && (features.modalities || []).includes("text"));
  $("words").title = joint
    ? `Search by words: any description, matched by the text-image model ${features.model}`
    : "Search by words: ImageNet labels (an index made with --labels)";
  $("text").placeholder = joint ? "Search by words, e.g. a red bus in the snow" : "Search by words, e.g. dog, bus, beach";
}

function setUp() {
  if (!history.state) history.replaceState({ depth: 0 }, "");
  state.depth = history.state.depth;
  state.list = storedList();
  window.addEventListener("hashchange", onHashChange);
  mountViewer({
    move: (item) => {
      history.replaceState({ depth: state.depth }, "", buildHash("view", { path: item.path }));
      render();
    },
    close: closeViewer,
    like: (path) => like(path),
  });
  $("controls").addEventListener("submit", (e) => e.preventDefault()); // no inline handlers: the CSP
  $("dates").addEventListener("submit", (e) => { e.preventDefault(); refilter(); });
  for (const id of ["since", "until"]) $(id).addEventListener("change", refilter);
  $("sort-browse").addEventListener("change", refilter);
  $("sort-results").addEventListener("change", refilter);
  $("min").addEventListener("change", refilter);
  $("results-tools").addEventListener("submit", (e) => { e.preventDefault(); refilter(); });
  $("home").addEventListener("click", (e) => { e.preventDefault(); go("browse", {}); });
  $("back").addEventListener("click", back);
  $("prev").addEventListener("click", () => turnPage(-1));
  $("next").addEventListener("click", () => turnPage(1));
  $("file").addEventListener("change", (e) => { upload(e.target.files[0]); e.target.value = ""; });
  $("words").addEventListener("submit", (e) => { e.preventDefault(); words($("text").value); });
  let depth = 0;
  window.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; $("drop").hidden = false; });
  window.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; $("drop").hidden = true; } });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    $("drop").hidden = true;
    upload(e.dataTransfer.files[0]);
  });
  window.addEventListener("paste", (e) => {
    const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) upload(file);
  });
  window.addEventListener("keydown", (e) => {
    if (viewerIsOpen() || e.defaultPrevented) return; // the viewer has its own keys
    if (["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName) || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "Escape" && state.route.name !== "browse") back();
    else if (e.key === "u" || e.key === "/") { e.preventDefault(); $("file").click(); }
    else if (e.key === "ArrowRight" && state.route.name === "browse") turnPage(1);
    else if (e.key === "ArrowLeft" && state.route.name === "browse") turnPage(-1);
  });
  startStatus((info) => {
    describeWords(info.features);
    if (state.images !== -1 && info.images !== state.images && state.route.name === "browse") render();
    state.images = info.images;
  });
  mountDuplicates(tile, openViewer);
  render();
}

setUp();
