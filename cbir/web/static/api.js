// The page's helpers: the JSON API of the server, file names in URLs, DOM building.

export const $ = (id) => document.getElementById(id);
// A file name's bytes, percent-encoded: the server sends a byte that is not UTF-8 as a lone
// surrogate U+DC80-U+DCFF (Python's surrogateescape), which encodeURIComponent refuses.
export function encName(name) {
  let out = "";
  for (const ch of name) {
    const code = ch.charCodeAt(0);
    out += ch.length === 1 && code >= 0xdc80 && code <= 0xdcff
      ? `%${(code - 0xdc00).toString(16).toUpperCase()}`
      : encodeURIComponent(ch);
  }
  return out;
}

export function enc(rel) {
  return rel.split("/").map(encName).join("/");
}

let csrfToken = null;

export async function csrf() {
  // the header every state-changing request carries; only a page of this origin can read it
  if (csrfToken === null) csrfToken = (await api("/api/csrf")).csrf;
  return csrfToken;
}

export async function api(url, options) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = { error: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) {
    const error = new Error(body.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

export function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

export function show(view) {
  for (const id of ["browse", "results", "duplicates"]) $(id).hidden = id !== view;
}

export function el(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props || {});
  for (const child of children) node.append(child);
  return node;
}

