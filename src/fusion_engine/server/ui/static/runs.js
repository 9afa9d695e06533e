// The run record: one plain object per fusion that the stream fills in and every view reads. The
// same object is kept in the history and exported as JSON, so a re-opened run looks exactly as it
// did when it finished.
import { duration, money } from "./dom.js";

export const RUN_FORMAT = "fusion-engine-ui-run";

/** The POST /fuse body of a request: a plain prompt when that is all there is. */
export function fuseBody(request) {
  const body = { panel: request.panel, web_search: request.web_search };
  if (request.turns.length === 1 && !request.system) return { ...body, prompt: request.turns[0].content };
  const system = request.system ? [{ role: "system", content: request.system }] : [];
  return { ...body, messages: [...system, ...request.turns] };
}

/** A new, running run of `request` (what the form asked for) on `panel` (from GET /panels). */
export function newRun(request, panel) {
  return {
    format: RUN_FORMAT,
    version: 1,
    id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    started_at: new Date().toISOString(),
    finished_at: null,
    status: "running", // then "done", "failed" or "stopped"
    request,
    body: fuseBody(request),
    members: panel.models.map((member) => member.slug),
    judge_model: panel.judge_model,
    responses: [], // PanelResponse by member index, as the `member` events arrive
    answer: "", // the judge's text so far
    result: null, // the FusionResult of the `result` event
    elapsed_ms: null, // from sending the request to the `result` event, by the page's clock
    error: null, // {status, message, type, param, code, request_id}
    request_id: null,
    cache: null,
  };
}

/** A finished run without what its result already holds (browser storage is small). */
export function forStorage(run) {
  return run.result ? { ...run, responses: [], answer: "" } : run;
}

/** A stored run as the views read it (the inverse of forStorage). */
export function revive(run) {
  if (!run.result) return run;
  const responses = [];
  for (const response of run.result.panel_responses ?? []) responses[response.index] = response;
  return { ...run, responses, answer: run.result.answer ?? "" };
}

/** A gateway error in words a person can act on. */
export function explain(error) {
  if (error.status === 401) {
    return `The gateway rejected the API key (401: ${error.message}). Enter a valid key to run fusions.`;
  }
  if (error.status === 0) return `Could not reach the gateway: ${error.message}.`;
  if (error.status) return `The gateway answered ${error.status}: ${error.message}`;
  return `The fusion failed: ${error.message}`;
}

/** One line on how a run went. */
export function summary(run) {
  if (run.status === "running") return "Running…";
  if (run.status === "stopped") return "Stopped. The gateway cancelled the calls still running.";
  if (run.status === "failed") return explain(run.error);
  const result = run.result;
  const answered = result.panel_responses.filter((r) => !r.error).length;
  const cached = result.cached ? " (from the cache)" : "";
  return `Done${cached}: ${answered} of ${result.panel_responses.length} members answered, ${duration(result.total_latency_ms)}, total cost ${money(result.total_cost)}.`;
}
