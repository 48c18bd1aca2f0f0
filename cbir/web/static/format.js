// How the page writes dates, sizes and scores (one place, so tiles and the viewer agree).

export const WEAK = 0.5; // a score under this is a weak match: drawn faded, its bar in the low colour

/** ``2024-05-03T14:22:05`` (the index's local capture time) as ``2024-05-03 14:22``; "" for none. */
export function formatTaken(taken) {
  if (!taken) return "";
  return taken.length >= 16 ? `${taken.slice(0, 10)} ${taken.slice(11, 16)}` : taken;
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** A name's percent-encoded bytes back to the name (bytes that are not UTF-8 as U+DC80-U+DCFF, as
 * the server writes them): the inverse of api.js's encName. */
export function decodeName(text) {
  const bytes = [];
  const utf8 = new TextEncoder();
  for (let i = 0; i < text.length;) {
    if (text[i] === "%" && /^[0-9a-fA-F]{2}$/.test(text.slice(i + 1, i + 3))) {
      bytes.push(parseInt(text.slice(i + 1, i + 3), 16));
      i += 3;
    } else {
      const ch = String.fromCodePoint(text.codePointAt(i));
      if (ch.length === 1 && ch.charCodeAt(0) >= 0xdc80 && ch.charCodeAt(0) <= 0xdcff) {
        bytes.push(ch.charCodeAt(0) - 0xdc00);
      } else {
        bytes.push(...utf8.encode(ch));
      }
      i += ch.length;
    }
  }
  const strict = new TextDecoder("utf-8", { fatal: true });
  let out = "";
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i];
    const n = b < 0x80 ? 1 : b >> 5 === 6 ? 2 : b >> 4 === 14 ? 3 : b >> 3 === 30 ? 4 : 0;
    if (n && i + n <= bytes.length) {
      try {
        out += strict.decode(new Uint8Array(bytes.slice(i, i + n)));
        i += n;
        continue;
      } catch (e) {
        // not UTF-8: the byte stands for itself, below
      }
    }
    out += String.fromCharCode(0xdc00 + b);
    i += 1;
  }
  return out;
}
