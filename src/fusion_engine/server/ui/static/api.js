// The gateway's HTTP API as the page uses it: panels, and a streamed POST /fuse.
import { readEvents } from "./sse.js";

// The API sits at the gateway's root, one level above this module (…/ui/api.js), which also
// works when a proxy serves the gateway under a path prefix.
const ROOT = new URL("../", import.meta.url);

/** An error the gateway answered with (status 0: it could not be reached). */
export class GatewayError extends Error {
  constructor(status, message, { type = null, param = null, code = null, requestId = null } = {}) {
    super(message);
    this.name = "GatewayError";
    this.status = status;
    this.type = type;
    this.param = param;
    this.code = code;
    this.requestId = requestId;
  }

  /** A plain dict for the run record and the JSON export. */
  toJSON() {
    const { status, message, type, param, code, requestId } = this;
    return { status, message, type, param, code, request_id: requestId };
  }
}

async function errorFrom(response) {
  const requestId = response.headers.get("x-request-id");
  let detail = null;
  try {
    detail = (await response.json())?.error ?? null;
  } catch {
    // Not JSON (a proxy's HTML page, say): the status line says enough.
  }
  const message = detail?.message || response.statusText || "request failed";
  return new GatewayError(response.status, message, { ...detail, requestId });
}

async function request(path, init) {
  try {
    return await fetch(new URL(path, ROOT), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new GatewayError(0, `could not reach the gateway (${error.message})`);
  }
}

/** Every loaded panel (`GET /panels`). */
export async function fetchPanels() {
  const response = await request("panels", { headers: { Accept: "application/json" } });
  if (!response.ok) throw await errorFrom(response);
  return (await response.json()).data;
}

/**
 * Run a fusion with progress events (`POST /fuse` with `stream: true`).
 *
 * Yields `{event: "open", requestId, cache}` once the gateway accepted the request, then
 * `{event: "member"|"judge"|"result"|"error", data}` as they arrive, and `{event: "alive"}` for
 * keep-alive comments.
 *
 * @throws {GatewayError} when the gateway refuses the request (401, 404, 502…) or is unreachable
 */
export async function* streamFusion(body, { key, signal }) {
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await request("fuse", {
    method: "POST",
    headers,
    body: JSON.stringify({ ...body, stream: true }),
    signal,
    cache: "no-store",
  });
  if (!response.ok) throw await errorFrom(response);
  const requestId = response.headers.get("x-request-id");
  yield { event: "open", requestId, cache: response.headers.get("x-fusion-cache") };
  for await (const item of readEvents(response.body)) {
    if (item.comment !== undefined) {
      yield { event: "alive" };
      continue;
    }
    let data;
    try {
      data = JSON.parse(item.data);
    } catch {
      throw new GatewayError(502, "the gateway sent an event that is not JSON", { requestId });
    }
    yield { event: item.event, data };
  }
}
