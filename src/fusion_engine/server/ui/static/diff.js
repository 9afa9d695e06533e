// Word-level comparison of answers: an LCS diff for display, and a similarity score for the
// agreement matrix. Words are compared case-insensitively and without surrounding punctuation,
// so "Paris." and "paris" count as the same word; the diff still shows each side's own spelling.

/** Cells of the LCS table above which the diff works on lines instead of words (memory bound). */
const MAX_CELLS = 4_000_000;
/** Words per answer the similarity score looks at (bounds the cost of a big agreement matrix). */
const MAX_SIMILARITY_WORDS = 1500;

/** The whitespace-separated words of a text. */
export function words(text) {
  return String(text ?? "").match(/\S+/g) ?? [];
}

/** The comparison key of a word: lower case, surrounding punctuation and a possessive 's removed. */
export function normalize(word) {
  const core = word
    .toLowerCase()
    .replace(/^[^\p{L}\p{N}]+|[^\p{L}\p{N}]+$/gu, "")
    .replace(/['\u2019]s$/u, "");
  return core || word;
}

/**
 * The longest-common-subsequence alignment of two token lists.
 *
 * @returns {Array<{op: "same"|"del"|"ins", a?: string, b?: string}>} one entry per token:
 *   `same` (in both; `a` and `b` are each side's spelling), `del` (only in a), `ins` (only in b)
 */
export function alignTokens(a, b, key = normalize) {
  const ka = a.map(key);
  const kb = b.map(key);
  let start = 0;
  while (start < a.length && start < b.length && ka[start] === kb[start]) start += 1;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && ka[endA - 1] === kb[endB - 1]) {
    endA -= 1;
    endB -= 1;
  }
  const ops = [];
  for (let k = 0; k < start; k += 1) ops.push({ op: "same", a: a[k], b: b[k] });
  const n = endA - start;
  const m = endB - start;
  const width = m + 1;
  // table[i * width + j] = LCS length of a[start+i..endA) and b[start+j..endB)
  const table = new Uint32Array((n + 1) * width);
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      table[i * width + j] =
        ka[start + i] === kb[start + j]
          ? table[(i + 1) * width + j + 1] + 1
          : Math.max(table[(i + 1) * width + j], table[i * width + j + 1]);
    }
  }
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (ka[start + i] === kb[start + j]) {
      ops.push({ op: "same", a: a[start + i], b: b[start + j] });
      i += 1;
      j += 1;
    } else if (table[(i + 1) * width + j] >= table[i * width + j + 1]) {
      ops.push({ op: "del", a: a[start + i] });
      i += 1;
    } else {
      ops.push({ op: "ins", b: b[start + j] });
      j += 1;
    }
  }
  for (; i < n; i += 1) ops.push({ op: "del", a: a[start + i] });
  for (; j < m; j += 1) ops.push({ op: "ins", b: b[start + j] });
  for (let k = 0; k < a.length - endA; k += 1) ops.push({ op: "same", a: a[endA + k], b: b[endB + k] });
  return ops;
}

/**
 * Word diff of two texts.
 *
 * @returns {{ops: Array<{op: string, a?: string, b?: string}>, same: number, removed: number,
 *   added: number, byLines: boolean}} `byLines` is true when the texts were too long for a word
 *   table and were aligned line by line first (changed lines then count all their words)
 */
export function diffWords(textA, textB) {
  const a = words(textA);
  const b = words(textB);
  let ops;
  let byLines = false;
  if ((a.length + 1) * (b.length + 1) <= MAX_CELLS) {
    ops = alignTokens(a, b);
  } else {
    byLines = true;
    const linesA = String(textA ?? "").split("\n").filter((line) => line.trim());
    const linesB = String(textB ?? "").split("\n").filter((line) => line.trim());
    ops = [];
    for (const line of alignTokens(linesA, linesB, (l) => words(l).map(normalize).join(" "))) {
      if (line.op === "same") {
        const pairA = words(line.a);
        const pairB = words(line.b);
        pairA.forEach((word, k) => ops.push({ op: "same", a: word, b: pairB[k] }));
      } else if (line.op === "del") {
        for (const word of words(line.a)) ops.push({ op: "del", a: word });
      } else {
        for (const word of words(line.b)) ops.push({ op: "ins", b: word });
      }
    }
  }
  const count = (op) => ops.reduce((total, item) => total + (item.op === op ? 1 : 0), 0);
  return { ops, same: count("same"), removed: count("del"), added: count("ins"), byLines };
}

/** Length of the longest common subsequence of two key lists (two rows of memory). */
function lcsLength(ka, kb) {
  if (ka.length < kb.length) [ka, kb] = [kb, ka];
  let previous = new Uint32Array(kb.length + 1);
  let current = new Uint32Array(kb.length + 1);
  for (let i = 1; i <= ka.length; i += 1) {
    for (let j = 1; j <= kb.length; j += 1) {
      current[j] = ka[i - 1] === kb[j - 1] ? previous[j - 1] + 1 : Math.max(previous[j], current[j - 1]);
    }
    [previous, current] = [current, previous];
  }
  return previous[kb.length];
}

/**
 * How much two texts say the same thing, in words and in order: 2·LCS / (|a| + |b|), from 0 to 1.
 * Two empty texts are identical (1).
 */
export function similarity(textA, textB) {
  const ka = words(textA).slice(0, MAX_SIMILARITY_WORDS).map(normalize);
  const kb = words(textB).slice(0, MAX_SIMILARITY_WORDS).map(normalize);
  if (!ka.length && !kb.length) return 1;
  return (2 * lcsLength(ka, kb)) / (ka.length + kb.length);
}

const STOPWORDS = new Set(
  (
    "a about above after again all also am an and any are as at be because been before being " +
    "below between both but by can could did do does doing down during each few for from further " +
    "had has have having he her here hers him his how i if in into is it its itself just me more " +
    "most my no nor not now of off on once only or other our ours out over own same she should so " +
    "some such than that the their theirs them then there these they this those through to too " +
    "under until up very was we were what when where which while who whom why will with would you " +
    "your yours answer answers"
  ).split(" "),
);

/**
 * Content words every text uses (the panel's shared vocabulary), in the order the first text
 * uses them; at most `limit`.
 */
export function sharedTerms(texts, limit = 12) {
  if (texts.length < 2) return [];
  const keysOf = (text) =>
    words(text)
      .map(normalize)
      .filter((word) => word.length > 2 && !STOPWORDS.has(word) && /\p{L}|\p{N}/u.test(word));
  const sets = texts.slice(1).map((text) => new Set(keysOf(text)));
  const shared = [];
  for (const word of keysOf(texts[0])) {
    if (!shared.includes(word) && sets.every((set) => set.has(word))) shared.push(word);
    if (shared.length >= limit) break;
  }
  return shared;
}
