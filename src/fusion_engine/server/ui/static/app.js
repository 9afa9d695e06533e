// The page: pick a panel, write a prompt or conversation, run a streamed fusion, compare.
// This module wires the DOM to the API and keeps the page's state; the views, the conversation
// editor and the run record live in their own modules.
import { GatewayError, fetchPanels, streamFusion } from "./api.js";
import { Conversation, Problem } from "./conversation.js";
import { fill, h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { explain, forStorage, newRun, revive, summary } from "./runs.js";
import * as store from "./store.js";
import {
  buildCards,
  comparableAnswers,
  historyItem,
  markAgreement,
  panelDetails,
  renderAgreement,
  renderCostTable,
  renderDiff,
  updateCard,
} from "./views.js";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("run-form"),
  panel: $("panel"),
  panelInfo: $("panel-info"),
  system: $("system"),
  webSearch: $("web-search"),
  run: $("run"),
  stop: $("stop"),
  status: $("status"),
  meta: $("run-meta"),
  answer: $("answer"),
  members: $("members"),
  compare: $("compare"),
  costTable: $("cost-table"),
  agreement: $("agreement"),
  diffA: $("diff-a"),
  diffB: $("diff-b"),
  diffSwap: $("diff-swap"),
  diffSummary: $("diff-summary"),
  diff: $("diff"),
  exportButton: $("export"),
  results: $("results"),
  historyList: $("history-list"),
  historyEmpty: $("history-empty"),
  clearHistory: $("clear-history"),
  notice: $("notice"),
  noticeText: $("notice-text"),
  noticeAction: $("notice-action"),
  noticeClose: $("notice-close"),
  keyButton: $("key-button"),
  keyDialog: $("key-dialog"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  keyNone: $("key-none"),
  keyCancel: $("key-cancel"),
};

const conversation = new Conversation($("turn-list"), $("add-turn"));

const state = {
  /** @type {Map<string, object>} panels by name, from GET /panels */
  panels: new Map(),
  /** the run on screen (running, finished, or re-opened from the history) */
  run: null,
  controller: null,
  answerFrame: 0,
  noticeAction: null,
};

// --- notices and status ----------------------------------------------------------------------

function showNotice(message, action = null) {
  fill(ui.noticeText, message);
  state.noticeAction = action?.run ?? null;
  ui.noticeAction.hidden = !action;
  if (action) fill(ui.noticeAction, action.label);
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
  state.noticeAction = null;
}

function setStatus(text, tone = "") {
  fill(ui.status, text);
  ui.status.dataset.tone = tone;
}

// --- API key ---------------------------------------------------------------------------------

function updateKeyButton() {
  const key = store.apiKey.get();
  fill(ui.keyButton, key === null ? "API key: not set" : key === "" ? "API key: none" : "API key: saved");
}

function openKeyDialog() {
  ui.keyInput.value = store.apiKey.get() ?? "";
  ui.keyInput.removeAttribute("aria-invalid");
  if (!ui.keyDialog.open) ui.keyDialog.showModal();
  ui.keyInput.focus();
}

function closeKeyDialog() {
  ui.keyDialog.close();
  updateKeyButton();
}

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.keyInput.value.trim();
  if (!key) {
    ui.keyInput.setAttribute("aria-invalid", "true");
    ui.keyInput.focus();
    return;
  }
  store.apiKey.set(key);
  closeKeyDialog();
  if (state.run?.error?.status === 401) hideNotice();
});
ui.keyNone.addEventListener("click", () => {
  store.apiKey.set("");
  closeKeyDialog();
});
ui.keyCancel.addEventListener("click", closeKeyDialog);
ui.keyDialog.addEventListener("close", () => ui.keyButton.focus({ preventScroll: true }));
ui.keyButton.addEventListener("click", openKeyDialog);

// --- panels ----------------------------------------------------------------------------------

async function loadPanels() {
  try {
    const panels = await fetchPanels();
    state.panels = new Map(panels.map((panel) => [panel.name, panel]));
  } catch (error) {
    fill(ui.panel, h("option", { value: "" }, "No panels"));
    showNotice(`Could not load the panels. ${explain(error)}`, { label: "Retry", run: loadPanels });
    return;
  }
  if (!state.panels.size) {
    fill(ui.panel, h("option", { value: "" }, "No panels"));
    showNotice("The gateway has no panels loaded (see FUSION_PANELS_DIR).");
    return;
  }
  const chosen = state.panels.has(store.lastPanel.get()) ? store.lastPanel.get() : [...state.panels.keys()][0];
  fill(
    ui.panel,
    [...state.panels.values()].map((panel) =>
      h("option", { value: panel.name, selected: panel.name === chosen }, `${panel.name} (${panel.models.length} members)`),
    ),
  );
  ui.panel.value = chosen;
  showPanel();
  if (state.noticeAction === loadPanels) hideNotice(); // a retry that worked
}

function showPanel() {
  const panel = state.panels.get(ui.panel.value);
  if (!panel) {
    fill(ui.panelInfo);
    return;
  }
  fill(ui.panelInfo, panelDetails(panel));
  ui.webSearch.checked = Boolean(panel.web_search);
  store.lastPanel.set(panel.name);
}

ui.panel.addEventListener("change", showPanel);

// --- the form --------------------------------------------------------------------------------

/** What the form asks for; throws a Problem naming the field at fault. */
function readRequest() {
  const panel = ui.panel.value;
  if (!state.panels.has(panel)) throw new Problem("Pick a panel first (none is loaded).", ui.panel);
  const turns = conversation.read();
  return { panel, system: ui.system.value.trim(), turns, web_search: ui.webSearch.checked };
}

function setForm(request) {
  if (request?.panel && state.panels.has(request.panel)) {
    ui.panel.value = request.panel;
    showPanel();
  }
  ui.system.value = request?.system ?? "";
  conversation.set(request?.turns ?? []);
  ui.webSearch.checked = Boolean(request?.web_search);
}

// --- showing a run ---------------------------------------------------------------------------

function renderAnswer() {
  const run = state.run;
  if (!run) return;
  const result = run.result;
  ui.answer.setAttribute("aria-busy", run.status === "running" ? "true" : "false");
  ui.answer.dataset.state = run.status;
  if (run.answer) {
    fill(ui.answer, renderMarkdown(run.answer)); // DOM nodes, never markup: see markdown.js
  } else if (result?.tool_calls?.length) {
    fill(ui.answer, h("p", {}, "The panel answers with tool calls:"), h("pre", {}, h("code", {}, JSON.stringify(result.tool_calls, null, 2))));
  } else if (run.status === "running") {
    fill(ui.answer, h("p", { class: "muted" }, "The judge writes here once the panel has answered…"));
  } else {
    fill(ui.answer, h("p", { class: "muted" }, run.error ? `No fused answer: ${run.error.message}` : "No fused answer."));
  }
  if (result?.degraded === "judge_failed") {
    ui.answer.prepend(h("p", { class: "warning" }, "Every judge failed: this is the panel's best member answer, not a fused one."));
  }
}

function scheduleAnswer() {
  if (!state.answerFrame) {
    state.answerFrame = requestAnimationFrame(() => {
      state.answerFrame = 0;
      renderAnswer();
    });
  }
}

function renderMeta(run) {
  const started = new Date(run.started_at).toLocaleString();
  const parts = [`Panel ${run.request.panel}`, `judge ${run.judge_model}`, started];
  if (run.request_id) parts.push(`request id ${run.request_id}`);
  if (run.cache) parts.push(`cache ${run.cache}`);
  fill(ui.meta, parts.join(" · "));
}

function diffChoices(run) {
  const answers = comparableAnswers(run);
  const keep = (select, fallback) => {
    const previous = select.value;
    fill(select, answers.map((answer) => h("option", { value: answer.key }, answer.label)));
    select.value = answers.some((answer) => answer.key === previous) ? previous : fallback;
  };
  const members = answers.filter((answer) => answer.index !== null);
  const fused = answers.find((answer) => answer.key === "fused");
  keep(ui.diffA, members[0]?.key ?? "");
  keep(ui.diffB, (fused ?? members[1])?.key ?? "");
  if (ui.diffA.value === ui.diffB.value && members[1]) ui.diffB.value = members[1].key;
  return answers;
}

function showDiff() {
  const answers = state.run ? comparableAnswers(state.run) : [];
  const find = (key) => answers.find((answer) => answer.key === key);
  renderDiff(ui.diff, ui.diffSummary, find(ui.diffA.value), find(ui.diffB.value));
}

function renderCompare(run) {
  ui.compare.hidden = false;
  renderCostTable(ui.costTable, run);
  if (run.status === "running") {
    fill(ui.agreement, h("p", { class: "muted" }, "Shown when the fusion finishes."));
    fill(ui.diffSummary, "Shown when the fusion finishes.");
    fill(ui.diff);
    ui.diffA.replaceChildren();
    ui.diffB.replaceChildren();
    return;
  }
  markAgreement(ui.members, renderAgreement(ui.agreement, run));
  diffChoices(run);
  showDiff();
}

/** Draw a run from scratch (a new run, a finished one, or one re-opened from the history). */
function renderRun(run) {
  state.run = run;
  renderMeta(run);
  setStatus(summary(run), run.status === "failed" ? "error" : "");
  buildCards(ui.members, run);
  renderAnswer();
  renderCompare(run);
  ui.exportButton.disabled = run.status === "running";
}

ui.diffA.addEventListener("change", showDiff);
ui.diffB.addEventListener("change", showDiff);
ui.diffSwap.addEventListener("click", () => {
  [ui.diffA.value, ui.diffB.value] = [ui.diffB.value, ui.diffA.value];
  showDiff();
});

// --- running ---------------------------------------------------------------------------------

function setRunning(running) {
  ui.run.disabled = running;
  ui.stop.disabled = !running;
  for (const button of ui.historyList.querySelectorAll("button")) button.disabled = running;
}

function onEvent(run, item) {
  switch (item.event) {
    case "open":
      run.request_id = item.requestId;
      run.cache = item.cache;
      renderMeta(run);
      break;
    case "member": {
      run.responses[item.data.index] = item.data;
      updateCard(ui.members, run, item.data.index);
      renderCostTable(ui.costTable, run);
      const done = run.responses.filter(Boolean).length;
      const total = run.members.length;
      setStatus(done < total ? `${done} of ${total} members finished…` : "Every member answered; the judge is fusing their answers…");
      break;
    }
    case "judge":
      if (!run.answer) setStatus("The judge is writing the fused answer…");
      run.answer += item.data.delta ?? "";
      scheduleAnswer();
      break;
    case "result":
      run.result = item.data;
      run.answer = item.data.answer ?? "";
      for (const response of item.data.panel_responses ?? []) run.responses[response.index] = response;
      run.status = "done";
      break;
    case "error": {
      const detail = item.data?.error ?? {};
      run.error = new GatewayError(null, detail.message ?? "unknown error", { ...detail, requestId: run.request_id }).toJSON();
      run.status = "failed";
      break;
    }
    default:
      break; // keep-alives and event types this page does not know
  }
}

async function startRun(event) {
  event?.preventDefault();
  if (state.run?.status === "running") return;
  hideNotice();
  let request;
  try {
    request = readRequest();
  } catch (problem) {
    if (!(problem instanceof Problem)) throw problem;
    showNotice(problem.message);
    problem.element?.focus();
    return;
  }
  const run = newRun(request, state.panels.get(request.panel));
  const controller = new AbortController();
  state.controller = controller;
  renderRun(run);
  setRunning(true);
  setStatus(`Asking the ${run.members.length} members of ${request.panel}…`);
  try {
    const key = store.apiKey.get() ?? "";
    const sent = performance.now();
    for await (const item of streamFusion(run.body, { key, signal: controller.signal })) {
      // The stream has no Server-Timing: the page times the request itself (see timing.js).
      if (item.event === "result") run.elapsed_ms = performance.now() - sent;
      onEvent(run, item);
    }
    if (run.status === "running") {
      run.error = new GatewayError(null, "the stream ended before the fused result arrived").toJSON();
      run.status = "failed";
    }
  } catch (error) {
    if (error.name === "AbortError") {
      run.status = "stopped";
    } else {
      run.error = (error instanceof GatewayError ? error : new GatewayError(null, String(error.message ?? error))).toJSON();
      run.status = "failed";
    }
  } finally {
    finishRun(run);
  }
}

function finishRun(run) {
  run.finished_at = new Date().toISOString();
  state.controller = null;
  if (state.answerFrame) cancelAnimationFrame(state.answerFrame);
  state.answerFrame = 0;
  renderRun(run);
  setRunning(false);
  if (!store.saveRun(forStorage(run))) showNotice("This run could not be saved in the history (browser storage is unavailable or full).");
  renderHistory();
  if (run.status === "failed") {
    const action = run.error.status === 401 ? { label: "Enter API key", run: openKeyDialog } : null;
    showNotice(explain(run.error), action);
  }
}

ui.form.addEventListener("submit", startRun);
ui.form.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    ui.form.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => state.controller?.abort());

// --- history and export ----------------------------------------------------------------------

function renderHistory() {
  const runs = store.loadHistory();
  fill(ui.historyList, runs.map((run) => historyItem(run, run.id === state.run?.id)));
  ui.historyEmpty.hidden = runs.length > 0;
  ui.clearHistory.hidden = runs.length === 0;
}

ui.historyList.addEventListener("click", (event) => {
  const button = event.target.closest(".history-item");
  const saved = button && store.loadHistory().find((item) => item.id === button.dataset.id);
  if (!saved || state.run?.status === "running") return;
  const run = revive(saved);
  hideNotice();
  setForm(run.request);
  renderRun(run);
  renderHistory();
  ui.results.focus();
});

ui.clearHistory.addEventListener("click", () => {
  store.clearHistory();
  renderHistory();
  $("history-title").focus();
});

function exportRun() {
  const run = state.run;
  if (!run || run.status === "running") return;
  const url = URL.createObjectURL(new Blob([JSON.stringify(run, null, 2)], { type: "application/json" }));
  const link = h("a", { href: url, download: `fusion-${run.request.panel}-${run.id}.json`, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

ui.exportButton.addEventListener("click", exportRun);

// --- start -----------------------------------------------------------------------------------

ui.noticeClose.addEventListener("click", hideNotice);
ui.noticeAction.addEventListener("click", () => state.noticeAction?.());

conversation.set([]);
updateKeyButton();
renderHistory();
if (store.apiKey.get() === null) openKeyDialog();
loadPanels().finally(() => {
  document.documentElement.dataset.ready = "true";
});
