// The near-duplicates view: groups of the index's near-duplicate images.
import { $, api, el, show, showError } from "./api.js";

let tile = null; // the tile maker of the page, given by mountDuplicates

export async function showDuplicates() {
  try {
    const data = await api("/api/duplicates");
    $("groups").replaceChildren(
      ...(data.groups || []).map((g) => el("ul", { className: "grid group" }, ...g.paths.map((p) => tile(p))))
    );
    show("duplicates");
  } catch (e) {
    showError(e.message);
  }
}

export async function probeDuplicates() {
  try {
    await api("/api/duplicates");
    $("show-duplicates").hidden = false;
  } catch (e) {
    $("show-duplicates").hidden = true; // 501: this version has no duplicate grouping
  }
}

/** Wires the view to the page: ``makeTile(path)`` draws one image. */
export function mountDuplicates(makeTile) {
  tile = makeTile;
  $("show-duplicates").addEventListener("click", showDuplicates);
  probeDuplicates();
}
