// The page's views: panel details, member cards, the cost table, agreement and the word diff.
// Each takes plain data (a panel, a run record) and returns or fills DOM; none keeps state.
import { diffWords, sharedTerms, similarity } from "./diff.js";
import { duration, fill, h, money, percent } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { stageTimes } from "./timing.js";

// --- panel -----------------------------------------------------------------------------------

export function panelDetails(panel) {
  const estimate = panel.estimated_cost_per_query;
  const cost = estimate
    ? `${money(estimate.min)} – ${money(estimate.max)} ${estimate.currency === "USD" ? "" : estimate.currency} per ${estimate.unit}`.replace(/\s+/g, " ")
    : "no estimate given";
  const fallbacks = panel.judge_fallback_models?.length ? ` (then ${panel.judge_fallback_models.join(", ")})` : "";
  return [
    panel.description ? h("p", { class: "panel-description" }, panel.description) : null,
    h(
      "dl",
      { class: "panel-facts" },
      h("dt", {}, `Members (${panel.models.length})`),
      h("dd", {}, h("ol", { class: "member-list" }, panel.models.map((m) => h("li", {}, m.slug)))),
      h("dt", {}, "Judge"),
      h("dd", {}, panel.judge_model + fallbacks),
      h("dt", {}, "Template"),
      h("dd", {}, panel.judge_template),
      h("dt", {}, "Estimated cost"),
      h("dd", { class: "estimate" }, cost),
    ),
  ];
}

// --- member cards ----------------------------------------------------------------------------

export function memberLabel(run, index) {
  return `#${index + 1} ${run.members[index] ?? run.responses[index]?.model ?? "member"}`;
}

function fact(name, value, className) {
  return h("div", { class: className }, h("dt", {}, name), h("dd", {}, value));
}

/** One card per panel member; filled by `updateCard` as answers arrive. */
export function buildCards(container, run) {
  const count = Math.max(run.members.length, run.responses.length);
  const running = run.status === "running";
  const cards = [];
  for (let index = 0; index < count; index += 1) {
    const title = `card-${index}-title`;
    cards.push(
      h(
        "article",
        { class: "card", "data-index": index, "data-state": "waiting", "aria-labelledby": title },
        h("header", { class: "card-head" }, h("h4", { id: title }, memberLabel(run, index)), h("span", { class: "badge" }, running ? "waiting…" : "no answer")),
        h("dl", { class: "facts" }),
        h("div", { class: "card-body markdown" }, h("p", { class: "muted" }, running ? "Waiting for this member…" : "No answer: the fusion ended before this member finished.")),
      ),
    );
  }
  fill(container, cards);
  run.responses.forEach((response, index) => response && updateCard(container, run, index));
}

export function updateCard(container, run, index) {
  const card = container.querySelector(`.card[data-index="${index}"]`);
  const response = run.responses[index];
  if (!card || !response) return;
  const failed = Boolean(response.error) || !(response.content || response.tool_calls?.length);
  card.dataset.state = failed ? "failed" : "ok";
  fill(card.querySelector(".badge"), failed ? "failed" : "answered");
  fill(
    card.querySelector(".facts"),
    fact("Latency", duration(response.latency_ms)),
    fact("Tokens", `${response.tokens_in} in · ${response.tokens_out} out`),
    fact("Cost", money(response.cost_usd)),
    response.attempts > 1 ? fact("Attempts", String(response.attempts)) : null,
  );
  const body = card.querySelector(".card-body");
  if (failed) {
    fill(body, h("p", { class: "error-text" }, h("strong", {}, `Error${response.error_kind ? ` (${response.error_kind})` : ""}: `), response.error || "no answer"));
    return;
  }
  fill(body, renderMarkdown(response.content ?? "")); // DOM nodes, never markup: see markdown.js
  if (response.tool_calls?.length) {
    body.append(h("p", {}, h("strong", {}, "Tool calls")), h("pre", {}, h("code", {}, JSON.stringify(response.tool_calls, null, 2))));
  }
  if (response.reasoning) {
    body.prepend(h("details", { class: "reasoning" }, h("summary", {}, "Reasoning"), h("pre", {}, response.reasoning)));
  }
}

/** Mark each card with its mean agreement with the other answers. */
export function markAgreement(container, scores) {
  for (const [index, score] of scores) {
    const facts = container.querySelector(`.card[data-index="${index}"] .facts`);
    if (facts) facts.append(fact("Agreement", percent(score), "agreement-fact"));
  }
}

// --- cost table ------------------------------------------------------------------------------

const COLUMNS = ["Call", "Model", "Status", "Latency", "Tokens in", "Tokens out", "Cost"];

/** A table cell; `data-label` names its column when a phone stacks the row (empty cells have none). */
function cell(column, value, className = null) {
  return h("td", { "data-label": value === "" ? null : COLUMNS[column], class: className }, value);
}

export function renderCostTable(table, run) {
  const head = h("thead", {}, h("tr", {}, COLUMNS.map((name) => h("th", { scope: "col" }, name))));
  const row = (role, call, model) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, role),
      cell(1, call?.model ?? model ?? "—", "model"),
      cell(2, call ? (call.error ? `failed: ${call.error_kind ?? "error"}` : "ok") : run.status === "running" ? "waiting…" : "no answer", "text"),
      cell(3, call ? duration(call.latency_ms) : "—"),
      cell(4, call ? String(call.tokens_in) : "—"),
      cell(5, call ? String(call.tokens_out) : "—"),
      cell(6, call ? money(call.cost_usd) : "—"),
    );
  const rows = [];
  const count = Math.max(run.members.length, run.responses.length);
  for (let index = 0; index < count; index += 1) {
    rows.push(row(`member ${index + 1}`, run.responses[index], run.members[index]));
  }
  const result = run.result;
  for (const attempt of result?.judge_attempts ?? []) {
    rows.push(row(attempt.error ? "judge (failed)" : "judge", attempt));
  }
  const total = result
    ? h(
        "tr",
        { class: "total" },
        h("th", { scope: "row" }, "total"),
        cell(1, result.cached ? "from the cache" : ""),
        cell(2, result.degraded ?? "", "text"),
        cell(3, duration(result.total_latency_ms)),
        cell(4, String(result.tokens_in)),
        cell(5, String(result.tokens_out)),
        cell(6, money(result.total_cost), "total-cost"),
      )
    : h("tr", { class: "total" }, h("th", { scope: "row" }, "total"), h("td", { colspan: 6, class: "text" }, run.status === "running" ? "when the fusion finishes" : "not available"));
  fill(
    table,
    h("caption", { class: "visually-hidden" }, "Latency, tokens and cost of every call, with the total and where the time went"),
    head,
    h("tbody", {}, rows),
    h("tfoot", {}, total, stageRows(run)),
  );
}

/** Members, judge and gateway time of a finished run: what `Server-Timing` says of non-streamed replies. */
function stageRows(run) {
  const times = stageTimes(run.result, run.elapsed_ms);
  if (!times) return [];
  const waited = run.elapsed_ms === null || run.elapsed_ms === undefined ? null : duration(run.elapsed_ms);
  const stages = [
    ["members", times.members_ms, run.result.cached ? "none: the cache answered" : "from the first member call until the panel had answered"],
    ["judge", times.judge_ms, run.result.cached ? "none: the cache answered" : "every judge call, one after another"],
    ["gateway", times.gateway_ms, waited ? `the rest of the ${waited} this page waited (the network included)` : "not measured for this run"],
  ];
  return [
    h("tr", { class: "stages-head" }, h("th", { scope: "colgroup", colspan: COLUMNS.length }, "Where the time went")),
    stages.map(([stage, ms, what]) =>
      h(
        "tr",
        { class: "stage", "data-stage": stage },
        h("th", { scope: "row" }, stage),
        h("td", { class: "text", colspan: 2 }, what),
        cell(3, duration(ms)),
        h("td", { colspan: 3 }),
      ),
    ),
  ];
}

// --- agreement -------------------------------------------------------------------------------

/** The answers a run can compare: members that answered, then the fused answer. */
export function comparableAnswers(run) {
  const answers = [];
  run.responses.forEach((response, index) => {
    if (response && !response.error && response.content) {
      answers.push({ key: `m${index}`, index, short: `#${index + 1}`, label: memberLabel(run, index), text: response.content });
    }
  });
  const fused = run.result ? run.result.answer : run.status === "running" ? null : run.answer;
  if (fused) answers.push({ key: "fused", index: null, short: "Fused", label: "Fused answer", text: fused });
  return answers;
}

/**
 * The pairwise similarity matrix, the panel's shared terms and the member closest to the rest.
 * @returns {Map<number, number>} each member's mean agreement with the other members
 */
export function renderAgreement(container, run) {
  const answers = comparableAnswers(run);
  const members = answers.filter((answer) => answer.index !== null);
  if (answers.length < 2) {
    fill(container, h("p", { class: "muted" }, "Agreement needs at least two answers."));
    return new Map();
  }
  const scores = answers.map((a) => answers.map((b) => (a === b ? 1 : similarity(a.text, b.text))));
  const level = (score) => Math.min(4, Math.floor(score * 5));
  const table = h(
    "table",
    { class: "matrix" },
    h("caption", {}, "Words two answers share, in order (2 × common words ÷ all words). 100% = the same words."),
    h("thead", {}, h("tr", {}, h("td", {}), answers.map((a) => h("th", { scope: "col", title: a.label }, a.short)))),
    h(
      "tbody",
      {},
      answers.map((a, i) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, a.label),
          answers.map((b, j) => h("td", { class: `level-${level(scores[i][j])}`, "data-pair": `${a.key}:${b.key}`, title: `${a.label} vs ${b.label}` }, percent(scores[i][j]))),
        ),
      ),
    ),
  );
  const means = new Map();
  members.forEach((member) => {
    const i = answers.indexOf(member);
    const others = members.filter((other) => other !== member).map((other) => scores[i][answers.indexOf(other)]);
    if (others.length) means.set(member.index, others.reduce((x, y) => x + y, 0) / others.length);
  });
  const terms = sharedTerms(members.map((member) => member.text));
  let closest = null;
  // With two members "closest to the rest" is a tie by definition: say it only from three on.
  if (members.length >= 3) {
    for (const [index, score] of means) if (!closest || score > closest.score) closest = { index, score };
  }
  fill(
    container,
    h("div", { class: "table-wrap", role: "region", "aria-label": "Agreement matrix", tabindex: 0 }, table),
    members.length >= 2
      ? h("p", { class: "shared" }, h("strong", {}, "Every member mentions: "), terms.length ? terms.map((term) => [h("mark", {}, term), " "]) : "no content word in common.")
      : null,
    closest ? h("p", { class: "closest" }, h("strong", {}, "Closest to the rest of the panel: "), `${memberLabel(run, closest.index)} (mean ${percent(closest.score)})`) : null,
  );
  return means;
}

// --- diff ------------------------------------------------------------------------------------

function diffSide(title, ops, side) {
  const tag = side === "a" ? "del" : "ins";
  const own = side === "a" ? "del" : "ins";
  const parts = [];
  let run = null;
  for (const op of ops) {
    if (op.op !== "same" && op.op !== own) continue;
    const word = op[side];
    if (run && run.changed === (op.op !== "same")) {
      run.words.push(word);
    } else {
      run = { changed: op.op !== "same", words: [word] };
      parts.push(run);
    }
  }
  const text = h("p", { class: "diff-text" });
  parts.forEach((part, k) => {
    if (k) text.append(" ");
    text.append(part.changed ? h(tag, {}, part.words.join(" ")) : part.words.join(" "));
  });
  return h("section", { class: `diff-side diff-${side}` }, h("h5", {}, title), text);
}

/** The word diff of two answers, side by side: words only in the first struck out, only in the second underlined. */
export function renderDiff(container, summary, a, b) {
  if (!a || !b) {
    fill(container);
    fill(summary, "Pick two answers to compare.");
    return;
  }
  const diff = diffWords(a.text, b.text);
  const total = diff.same * 2 + diff.removed + diff.added;
  fill(
    summary,
    `${diff.same} words in common (${percent(total ? (2 * diff.same) / total : 1)}), ${diff.removed} only in ${a.label}, ${diff.added} only in ${b.label}.`,
    diff.byLines ? " Long answers: compared line by line." : "",
    " Case and punctuation are ignored.",
  );
  fill(container, h("div", { class: "diff-cols" }, diffSide(`From: ${a.label}`, diff.ops, "a"), diffSide(`To: ${b.label}`, diff.ops, "b")));
}

// --- history ---------------------------------------------------------------------------------

export function promptOf(run) {
  const turns = run.request?.turns ?? [];
  const last = [...turns].reverse().find((turn) => turn.role === "user") ?? turns[turns.length - 1];
  return (last?.content ?? "").trim().replace(/\s+/g, " ");
}

export function historyItem(run, current) {
  const when = new Date(run.started_at);
  const time = Number.isNaN(when.getTime()) ? "" : when.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  const prompt = promptOf(run);
  const outcome = run.status === "done" ? money(run.result?.total_cost) : run.status;
  return h(
    "li",
    {},
    h(
      "button",
      { type: "button", class: "history-item", "data-id": run.id, "aria-current": current ? "true" : null },
      h("span", { class: "history-prompt" }, prompt.length > 80 ? `${prompt.slice(0, 79)}…` : prompt || "(empty prompt)"),
      h("span", { class: "history-meta" }, `${run.request?.panel ?? "?"} · ${time} · ${outcome}`),
    ),
  );
}
