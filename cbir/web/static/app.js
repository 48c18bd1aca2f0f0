// cbir's page: browse the collection, search by example. Uses only the JSON API of the server.
import { $, api, csrf, el, enc, encName, show, showError } from "./api.js";
import { mountDuplicates, showDuplicates } from "./duplicates.js";
import { refreshInfo, startStatus } from "./status.js";

const state = { dir: "", page: 1, pages: 1, images: -1, ready: false };

function tile(path, score) {
  const img = el("img", { src: `/thumbs/${enc(path)}`, alt: path, loading: "lazy" });
  const more = el("button", { type: "button", className: "more", title: `More like ${path}` }, img);
  more.addEventListener("click", () => like(path));
  const link = el("a", { href: `/files/${enc(path)}`, target: "_blank", rel: "noopener" }, path);
  const meta = el("div", { className: "meta" }, link);
  if (score !== undefined) meta.append(el("div", { className: "score" }, `score ${score.toFixed(3)}`));
  const item = el("li", { className: "tile" }, more, meta);
  item.dataset.path = path;
  return item;
}

function underParam() {
  return $("restrict").checked && state.dir ? `&under=${encName(state.dir)}` : "";
}

function k() {
  const value = parseInt($("k").value, 10);
  return Number.isFinite(value) && value > 0 ? Math.min(value, 500) : 18;
}

async function browse(dir, page) {
  try {
    const data = await api(`/api/browse?dir=${encName(dir)}&page=${page}`);
    showError("");
    Object.assign(state, { dir: data.dir, page: data.page, pages: data.pages });
    const crumbs = $("crumbs");
    crumbs.replaceChildren();
    const parts = data.dir ? data.dir.split("/") : [];
    const link = (label, target) => {
      const a = el("a", { href: "#" }, label);
      a.addEventListener("click", (e) => { e.preventDefault(); browse(target, 1); });
      return a;
    };
    crumbs.append(link("all images", ""));
    parts.forEach((part, i) => crumbs.append(" / ", link(part, parts.slice(0, i + 1).join("/"))));
    $("folders").replaceChildren(
      ...data.folders.map((f) => el("li", {}, link(`${f.name}/ (${f.images})`, f.path)))
    );
    $("grid").replaceChildren(...data.images.map((im) => tile(im.path)));
    $("page").textContent = data.total ? `page ${data.page} of ${data.pages} (${data.total} here)` : "";
    $("prev").disabled = data.page <= 1;
    $("next").disabled = data.page >= data.pages;
    $("restrict-dir").textContent = data.dir ? `${data.dir}/` : "/";
    show("browse");
  } catch (e) {
    showError(e.message);
  }
}

function showResults(data, queryNode) {
  showError("");
  $("query").replaceChildren(
    queryNode,
    el("span", {}, `${data.results.length} results in ${data.took_ms} ms` +
      (data.under ? ` (only in ${data.under}/)` : "") + ". Click a picture for more like it; Esc to browse.")
  );
  $("result-grid").replaceChildren(...data.results.map((r) => tile(r.path, r.score)));
  show("results");
  const first = document.querySelector("#result-grid button.more");
  if (first) first.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

async function like(path) {
  try {
    const data = await api(`/api/search?like=${encName(path)}&k=${k()}${underParam()}`);
    showResults(data, el("img", { src: `/thumbs/${enc(path)}`, alt: `query: ${path}` }));
  } catch (e) {
    showError(e.message);
  }
}

async function words(text) {
  if (!text.trim()) return;
  try {
    const data = await api(`/api/search?text=${encodeURIComponent(text)}&k=${k()}${underParam()}`);
    history.replaceState(null, "", `#text=${encodeURIComponent(text)}`);
    showResults(data, el("strong", {}, `“${text}” `));
  } catch (e) {
    showError(e.message);
  }
}

async function upload(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name} is not an image`);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name || "pasted image");
  $("status").textContent = `Searching with ${file.name || "the pasted image"}…`;
  try {
    const headers = { "X-CSRF-Token": await csrf() };
    const data = await api(`/api/search?k=${k()}${underParam()}`, { method: "POST", body: form, headers });
    showResults(data, el("img", { src: URL.createObjectURL(file), alt: `query: ${file.name}` }));
  } catch (e) {
    showError(e.message); // 503: the model is still loading, or too many uploads wait: the server says which
  }
  refreshInfo();
}

function setUp() {
  $("controls").addEventListener("submit", (e) => e.preventDefault()); // no inline handlers: the CSP
  $("home").addEventListener("click", (e) => { e.preventDefault(); browse(state.dir, state.page); });
  $("prev").addEventListener("click", () => browse(state.dir, state.page - 1));
  $("next").addEventListener("click", () => browse(state.dir, state.page + 1));
  $("file").addEventListener("change", (e) => upload(e.target.files[0]));
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
    if (e.target.tagName === "INPUT") return;
    if (e.key === "Escape") browse(state.dir, state.page);
    else if (e.key === "u" || e.key === "/") { e.preventDefault(); $("file").click(); }
    else if (e.key === "ArrowRight" && !$("browse").hidden && !$("next").disabled) browse(state.dir, state.page + 1);
    else if (e.key === "ArrowLeft" && !$("browse").hidden && !$("prev").disabled) browse(state.dir, state.page - 1);
  });
  if (!location.hash.startsWith("#/duplicates")) browse("", 1); // else the review (route below)
  if (location.hash.startsWith("#text=")) {
    $("text").value = decodeURIComponent(location.hash.slice(6));
    words($("text").value);
  }
  startStatus((info) => {
    state.ready = info.ready;
    if (info.images !== state.images && !$("browse").hidden) browse(state.dir, state.page);
    state.images = info.images;
  });
  mountDuplicates(tile);
  const route = () => {
    if (location.hash.startsWith("#/duplicates")) {
      showDuplicates(new URLSearchParams(location.hash.split("?")[1] || ""));
    }
  };
  window.addEventListener("hashchange", route);
  route();
}

setUp();
