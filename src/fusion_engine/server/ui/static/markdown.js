// A small, safe Markdown renderer for model output.
//
// Safety comes from the order of operations: the whole text is HTML-escaped FIRST, and only then
// are a few patterns turned into fixed tags. No tag or attribute of the input survives as markup;
// the only attribute values taken from the input are link targets, which must be http(s) URLs and
// are already escaped (quotes included), so they cannot leave their attribute.
//
// Supported: fenced code blocks, inline code, headings, bold / italic / strikethrough, ordered and
// unordered (nested) lists, block quotes, pipe tables, horizontal rules, http(s) links and bare
// http(s) URLs. Everything else is shown as text.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for use in HTML content and in double-quoted attribute values. */
export function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (char) => ESCAPES[char]);
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}&gt; ?/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_SEPARATOR = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;
const PLACEHOLDER = /\u0000(\d+)\u0000/g;
// URL characters of the escaped text: `&amp;` is the only entity allowed, so an escaped quote or
// angle bracket always ends a URL.
const URL_CHARS = String.raw`https?:\/\/(?:&amp;|[^\s&()])+`;
const LINK = new RegExp(String.raw`\[([^\]\n]+)\]\((${URL_CHARS})\)`, "g");
const BARE_URL = new RegExp(String.raw`(^|[\s(])(${URL_CHARS})`, "g");

/**
 * Render Markdown to an HTML string that is safe to assign to innerHTML.
 *
 * @param {string} source untrusted text (model output)
 * @param {{headingOffset?: number}} options headings are shifted down by this many levels (the
 *   answer sits under the page's own headings), capped at h6
 */
export function renderMarkdown(source, { headingOffset = 2 } = {}) {
  // NUL is our placeholder delimiter; it has no business in model output anyway.
  const text = escapeHtml(String(source ?? "").replace(/\u0000/g, "\uFFFD"));
  return renderBlocks(text.replace(/\r\n?/g, "\n").split("\n"), headingOffset);
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
      const lang = fence[2] ? ` data-lang="${fence[2]}"` : "";
      const label = fence[2] ? `<span class="code-lang" aria-hidden="true">${fence[2]}</span>` : "";
      out.push(`<div class="code-block">${label}<pre${lang}><code>${body.join("\n")}</code></pre></div>`);
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(heading[1].length + headingOffset, 6);
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.push("<hr>");
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        quoted.push(lines[i].replace(QUOTE, ""));
        i += 1;
      }
      out.push(`<blockquote>${renderBlocks(quoted, headingOffset)}</blockquote>`);
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
      out.push(renderList(items));
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
    out.push(`<p>${paragraph.map(inline).join("<br>")}</p>`);
  }
  return out.join("\n");
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

function renderList(items) {
  // A stack of open lists by indentation: deeper items open a nested list inside the last item.
  let html = "";
  const stack = [];
  const open = (item) => {
    const start = item.ordered && item.start !== 1 && Number.isFinite(item.start) ? ` start="${item.start}"` : "";
    html += item.ordered ? `<ol${start}>` : "<ul>";
    stack.push({ indent: item.indent, ordered: item.ordered });
  };
  const close = () => {
    const list = stack.pop();
    html += list.ordered ? "</li></ol>" : "</li></ul>";
  };
  for (const item of items) {
    if (!stack.length || item.indent > stack[stack.length - 1].indent) {
      open(item);
    } else {
      while (stack.length > 1 && item.indent < stack[stack.length - 1].indent) close();
      if (stack[stack.length - 1].ordered !== item.ordered) {
        close(); // "- a" then "1. b" at the same depth: a new list of the other kind
        open(item);
      } else {
        html += "</li>";
      }
    }
    html += `<li>${item.text.split("\n").map(inline).join("<br>")}`;
  }
  while (stack.length) close();
  return html;
}

function splitRow(row) {
  return row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((cell) => cell.trim());
}

function renderTable(rows) {
  const [head, ...body] = rows.map(splitRow);
  const th = head.map((cell) => `<th scope="col">${inline(cell)}</th>`).join("");
  const trs = body.map((cells) => `<tr>${head.map((_, k) => `<td>${inline(cells[k] ?? "")}</td>`).join("")}</tr>`);
  return `<div class="table-wrap"><table><thead><tr>${th}</tr></thead><tbody>${trs.join("")}</tbody></table></div>`;
}

/** Inline Markdown on already-escaped text. Code spans and links are set aside first. */
function inline(text) {
  const saved = [];
  const keep = (html) => `\u0000${saved.push(html) - 1}\u0000`;
  let out = text.replace(/(`+)(.+?)\1(?!`)/g, (_, ticks, code) => keep(`<code>${code}</code>`));
  out = out.replace(LINK, (_, label, url) => keep(link(url, emphasis(label))));
  out = out.replace(BARE_URL, (_, before, url) => {
    const [, target, trailing] = /^(.*?)([.,;:!?*_]*)$/.exec(url);
    return before + keep(link(target, target)) + trailing;
  });
  out = emphasis(out);
  // Restore twice: a link label may itself hold a code span.
  return out.replace(PLACEHOLDER, (_, n) => saved[n]).replace(PLACEHOLDER, (_, n) => saved[n]);
}

function link(url, label) {
  return `<a href="${url}" rel="noopener noreferrer nofollow" target="_blank">${label}</a>`;
}

function emphasis(text) {
  return text
    .replace(/\*\*(?=\S)(.+?)(?<=\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)(.+?)(?<=\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/~~(?=\S)(.+?)(?<=\S)~~/g, "<del>$1</del>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*]*?[^\s*]|)\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_]|)_(?!\w)/g, "$1<em>$2</em>");
}
