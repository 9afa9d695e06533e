// Where a run's time went: the members, the judge, and the rest (the gateway's own share).
//
// The page streams its fusions, and a stream's headers leave before the fusion ends, so the
// `Server-Timing` header of non-streamed replies cannot reach it. The page splits the time the
// same way the gateway does (src/fusion_engine/stage_timing.py, `stage_times`: keep the two in
// step) from the FusionResult and its own clock, which adds the network to the gateway's share.

/**
 * Milliseconds by stage of a run whose request took `elapsedMs` as the page saw it (null: not
 * measured, as in runs saved before the page measured it).
 * @returns {{members_ms: number, judge_ms: number, gateway_ms: number|null}|null}
 */
export function stageTimes(result, elapsedMs) {
  if (!result) return null;
  const gateway = (fusionMs) => (elapsedMs === null || elapsedMs === undefined ? null : Math.max(elapsedMs - fusionMs, 0));
  // A cached result's own timings describe the request that fused it, not this one.
  if (result.cached) return { members_ms: 0, judge_ms: 0, gateway_ms: gateway(0) };
  const judge = (result.judge_attempts ?? []).reduce((sum, attempt) => sum + attempt.latency_ms, 0);
  const fusion = result.total_latency_ms;
  return { members_ms: Math.max(fusion - judge, 0), judge_ms: judge, gateway_ms: gateway(fusion) };
}
