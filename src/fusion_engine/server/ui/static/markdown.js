// A small, safe Markdown renderer for model output.
//
// It builds DOM nodes, never an HTML string: model text only ever becomes text nodes, and every
// element and attribute is one this module names. The one attribute value taken from the text is
// a link target, which must parse as an http(s) URL and is set with setAttribute (no quoting to
// escape from). Inline constructs are found on the raw text, set aside behind placeholders, and
// placed as nodes afterwards, so one construct can never end up inside another's attribute (the
// old string renderer let a bare URL swallow a link's placeholder, which put a second <a> with
// `onfocus` into the first one's href).
//
// Supported: fenced code blocks, inline code, headings, bold / italic / strikethrough, ordered and
// unordered (nested) lists, block quotes, pipe tables, horizontal rules, http(s) links and bare
// http(s) URLs. Everything else is shown as text.
import { h } from "./dom.js";

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEPARATOR = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;
// Placeholders are NUL-delimited indexes; NUL is removed from the input first, and no URL or
// link label may contain one, so a placeholder is always replaced whole, by exactly one node.
const PLACEHOLDER = /\u0000(\d+)\u0000/;
// A URL ends at whitespace, a control character, a quote, an angle bracket, a backtick, a
// parenthesis or a placeholder.
const URL_CHARS = String.raw`https?:\/\/[^\s\u0000-\u001f\u007f"'<>\`()]+`;
const CODE_SPAN = /(`+)(.+?)\1(?!`)/g;
const LINK = new RegExp(String.raw`\[([^\[\]\n\u0000]+|[^\[\]\n]*\u0000\d+\u0000[^\[\]\n]*)\]\((${URL_CHARS})\)`, "g");
const BARE_URL = new RegExp(String.raw`(^|[\s(\u0000])(${URL_CHARS})`, "g");
// Emphasis, strongest first (the earliest match wins; on a tie, the first pattern here).
const EMPHASIS = [
  ["strong", /\*\*(?=\S)(.+?)(?<=\S)\*\*/g],
  ["strong", /(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)/g],
  ["del", /~~(?=\S)(.+?)(?<=\S)~~/g],
  ["em", /(?<![*\w])\*(?=[^\s*])([^*]*?[^\s*]|)\*(?!\*)/g],
  ["em", /(?<!\w)_(?=[^\s_])([^_]*?[^\s_]|)_(?!\w)/g],
];
const LINK_ATTRIBUTES = { rel: "noopener noreferrer nofollow", target: "_blank" };

/**
 * Render Markdown to DOM nodes (a DocumentFragment to append or `fill` with).
 *
 * @param {string} source untrusted text (model output)
 * @param {{headingOffset?: number}} options headings are shifted down by this many levels (the
 *   answer sits under the page's own headings), capped at h6
 * @returns {DocumentFragment}
 */
export function renderMarkdown(source, { headingOffset = 2 } = {}) {
  // NUL is our placeholder delimiter; it has no business in model output anyway.
  const text = String(source ?? "").replace(/\u0000/g, "\uFFFD");
  const fragment = document.createDocumentFragment();
  fragment.append(...renderBlocks(text.replace(/\r\n?/g, "\n").split("\n"), headingOffset));
  return fragment;
}

/**
 * An http(s) URL's normalised form, or null for anything else (javascript:, data:, garbage).
 *
 * @param {string} text
 */
export function safeUrl(text) {
  let url;
  try {
    url = new URL(text);
  } catch {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

function renderBlocks(lines, headingOffset) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (/^\s*$/.test(line)) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence[1])) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence (an unclosed block runs to the end, as while streaming)
      const lang = fence[2] || null;
      out.push(
        h(
          "div",
          { class: "code-block" },
          lang ? h("span", { class: "code-lang", "aria-hidden": "true" }, lang) : null,
          h("pre", { "data-lang": lang }, h("code", {}, body.join("\n"))),
        ),
      );
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(heading[1].length + headingOffset, 6);
      out.push(h(`h${level}`, {}, inline(heading[2])));
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.push(h("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        quoted.push(lines[i].replace(QUOTE, ""));
        i += 1;
      }
      out.push(h("blockquote", {}, renderBlocks(quoted, headingOffset)));
      continue;
    }
    if (LIST_ITEM.test(line)) {
      const items = [];
      while (i < lines.length) {
        const item = LIST_ITEM.exec(lines[i]);
        if (item) {
          items.push({ indent: item[1].length, ordered: /\d/.test(item[2]), start: parseInt(item[2], 10), text: item[3] });
        } else if (/^\s+\S/.test(lines[i]) && items.length) {
          items[items.length - 1].text += `\n${lines[i].trim()}`; // a continuation line
        } else {
          break;
        }
        i += 1;
      }
      out.push(...renderList(items));
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEPARATOR.test(lines[i + 1])) {
      const rows = [line];
      i += 2;
      while (i < lines.length && lines[i].includes("|") && !/^\s*$/.test(lines[i])) {
        rows.push(lines[i]);
        i += 1;
      }
      out.push(renderTable(rows));
      continue;
    }
    const paragraph = [];
    while (i < lines.length && !/^\s*$/.test(lines[i]) && !startsBlock(lines, i)) {
      paragraph.push(lines[i].trim());
      i += 1;
    }
    if (!paragraph.length) {
      paragraph.push(line.trim()); // cannot happen for well-formed input; never loop forever
      i += 1;
    }
    out.push(h("p", {}, lineBroken(paragraph)));
  }
  return out;
}

function startsBlock(lines, i) {
  const line = lines[i];
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    RULE.test(line) ||
    QUOTE.test(line) ||
    LIST_ITEM.test(line) ||
    (line.includes("|") && i + 1 < lines.length && TABLE_SEPARATOR.test(lines[i + 1]))
  );
}

/** Lines rendered inline and joined by <br>. */
function lineBroken(lines) {
  return lines.flatMap((line, k) => (k ? [h("br"), ...inline(line)] : inline(line)));
}

function renderList(items) {
  // A stack of open lists by indentation: deeper items open a nested list inside the last item.
  const top = [];
  const stack = [];
  const open = (item) => {
    const start = item.ordered && item.start !== 1 && Number.isFinite(item.start) ? item.start : null;
    const list = h(item.ordered ? "ol" : "ul", { start });
    const parent = stack.length ? stack[stack.length - 1].lastItem : null;
    if (parent) parent.append(list);
    else top.push(list);
    stack.push({ indent: item.indent, ordered: item.ordered, element: list, lastItem: null });
  };
  for (const item of items) {
    if (!stack.length || item.indent > stack[stack.length - 1].indent) {
      open(item);
    } else {
      while (stack.length > 1 && item.indent < stack[stack.length - 1].indent) stack.pop();
      if (stack[stack.length - 1].ordered !== item.ordered) {
        stack.pop(); // "- a" then "1. b" at the same depth: a new list of the other kind
        open(item);
      }
    }
    const current = stack[stack.length - 1];
    current.lastItem = h("li", {}, lineBroken(item.text.split("\n")));
    current.element.append(current.lastItem);
  }
  return top;
}

function splitRow(row) {
  return row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((cell) => cell.trim());
}

function renderTable(rows) {
  const [head, ...body] = rows.map(splitRow);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, head.map((cell) => h("th", { scope: "col" }, inline(cell))))),
      h("tbody", {}, body.map((cells) => h("tr", {}, head.map((_, k) => h("td", {}, inline(cells[k] ?? "")))))),
    ),
  );
}

/**
 * Inline Markdown on raw text, as nodes. Code spans, then links, then bare URLs are set aside
 * as nodes behind placeholders (so a URL is never looked for inside code or a link's label);
 * emphasis is then parsed around them.
 */
function inline(text) {
  const saved = [];
  const keep = (node) => `\u0000${saved.push(node) - 1}\u0000`;
  let out = text.replace(CODE_SPAN, (_, ticks, code) => keep(h("code", {}, code)));
  out = out.replace(LINK, (whole, label, url) => {
    const href = safeUrl(url);
    return href ? keep(h("a", { href, ...LINK_ATTRIBUTES }, emphasis(label, saved))) : whole;
  });
  out = out.replace(BARE_URL, (whole, before, url) => {
    const [, target, trailing] = /^(.*?)([.,;:!?*_~]*)$/.exec(url);
    const href = safeUrl(target);
    return href ? before + keep(h("a", { href, ...LINK_ATTRIBUTES }, target)) + trailing : whole;
  });
  return emphasis(out, saved);
}

/** Emphasis around text with placeholders: the earliest span wins, its inside is parsed again. */
function emphasis(text, saved) {
  const nodes = [];
  let pos = 0;
  while (pos < text.length) {
    let best = null;
    for (const [tag, pattern] of EMPHASIS) {
      pattern.lastIndex = pos;
      const match = pattern.exec(text);
      if (match && (!best || match.index < best.match.index)) best = { tag, match };
    }
    if (!best) break;
    nodes.push(...restore(text.slice(pos, best.match.index), saved));
    nodes.push(h(best.tag, {}, emphasis(best.match[1], saved)));
    pos = best.match.index + best.match[0].length;
  }
  nodes.push(...restore(text.slice(pos), saved));
  return nodes;
}

/** Text with placeholders -> text nodes and the saved nodes they stand for. */
function restore(text, saved) {
  const parts = text.split(PLACEHOLDER);
  // split() with one capture group alternates: text, index, text, index, ..., text.
  return parts.flatMap((part, k) => {
    if (k % 2 === 0) return part ? [document.createTextNode(part)] : [];
    return [saved[Number(part)]];
  });
}
