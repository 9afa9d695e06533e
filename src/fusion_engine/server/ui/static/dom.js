// Building DOM without HTML strings: text always goes in as text nodes, so model output, model
// names and error messages can never become markup (markdown.js builds its nodes with `h` too).

/**
 * Create an element: `h("p", {class: "x"}, "text", child)`. Attributes set to null/false are
 * skipped; `true` sets an empty attribute; strings and numbers among children become text nodes.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** "$0.004200", or "unknown" when the provider reported no cost (never estimated). */
export function money(value) {
  return value === null || value === undefined ? "unknown" : `$${Number(value).toFixed(6)}`;
}

/** "850 ms" or "1.24 s". */
export function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/** "42%". */
export function percent(ratio) {
  return `${Math.round(ratio * 100)}%`;
}
