// What the page keeps in the browser: the API key and the history of runs (localStorage).
// Storage can be unavailable (private mode) or full: the page then works without remembering.

const KEY_ITEM = "fusion-ui.api-key";
const HISTORY_ITEM = "fusion-ui.history";
const PANEL_ITEM = "fusion-ui.panel";
/** Runs kept; older ones are dropped first (and more if storage is full). */
export const MAX_RUNS = 30;

function read(item) {
  try {
    return localStorage.getItem(item);
  } catch {
    return null;
  }
}

function write(item, value) {
  try {
    if (value === null) localStorage.removeItem(item);
    else localStorage.setItem(item, value);
    return true;
  } catch {
    return false;
  }
}

/** The stored key: a string ("" = the gateway needs none), or null when never asked. */
export const apiKey = {
  get: () => read(KEY_ITEM),
  set: (value) => write(KEY_ITEM, value),
};

export const lastPanel = {
  get: () => read(PANEL_ITEM),
  set: (value) => write(PANEL_ITEM, value),
};

/** The saved runs, newest first. */
export function loadHistory() {
  try {
    const runs = JSON.parse(read(HISTORY_ITEM) ?? "[]");
    return Array.isArray(runs) ? runs.filter((run) => run && typeof run.id === "string") : [];
  } catch {
    return [];
  }
}

/** Insert or replace a run (by id) at the top; drops the oldest runs when storage is full. */
export function saveRun(run) {
  const runs = [run, ...loadHistory().filter((other) => other.id !== run.id)].slice(0, MAX_RUNS);
  while (runs.length) {
    if (write(HISTORY_ITEM, JSON.stringify(runs))) return true;
    runs.pop();
  }
  return false;
}

export function clearHistory() {
  write(HISTORY_ITEM, null);
}
