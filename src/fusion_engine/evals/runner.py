"""Run every system on every item, grade, and write the report.

Records go to ``records.jsonl`` as each (system, item) finishes, so a crash loses at most the
calls in flight; a re-run skips what is already recorded and answers the rest from the disk
cache where it can. Then: per-system summaries, fusion against the best single member and
against the judge alone, a Markdown report and a PNG chart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from .call_cache import CallCache
from .graders import GradeContext, grade
from .items import EvalItem
from .records import ItemRecord
from .report import render_chart, render_markdown
from .statistics import Comparison, SystemSummary, best_single, compare, summarize
from .systems import Answer, Backend, SystemSpec

RECORDS = "records.jsonl"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ItemRecord).decode

#: Told about each finished record (progress display).
OnRecord = Callable[[ItemRecord], None]


class EvalOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an eval produced."""

    records: list[ItemRecord]
    summaries: list[SystemSummary]
    comparisons: list[Comparison]
    report_path: Path
    chart_path: Path


def load_records(path: Path) -> dict[tuple[str, str], ItemRecord]:
    """Records already written, the last one per (system, item); a torn last line is skipped."""
    records: dict[tuple[str, str], ItemRecord] = {}
    if not path.exists():
        return records
    for line in path.read_bytes().splitlines():
        try:
            record = _decode(line)
        except msgspec.DecodeError:
            continue  # a line cut by a crash
        records[(record.system, record.item_id)] = record
    return records


async def run_items(
    items: Sequence[EvalItem],
    systems: Sequence[SystemSpec],
    backend: Backend,
    *,
    out_dir: Path,
    cache: CallCache,
    concurrency: int = 4,
    grade_context: GradeContext | None = None,
    on_record: OnRecord | None = None,
) -> list[ItemRecord]:
    """Every (system, item) record: those already on disk, plus the rest, run now."""
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per run, before any call
    path = out_dir / RECORDS
    done = {key: record for key, record in load_records(path).items() if record.error is None}
    _end_torn_line(path)
    todo = [(s, i) for s in systems for i in items if (s.name, i.id) not in done]
    limit = asyncio.Semaphore(concurrency)
    lock = asyncio.Lock()
    notify = on_record or (lambda record: None)
    fresh: dict[tuple[str, str], ItemRecord] = {}

    async def one(system: SystemSpec, item: EvalItem) -> None:
        async with limit:
            record = await _run_one(system, item, backend, cache, grade_context)
        async with lock:
            with path.open("ab") as stream:
                stream.write(_encode(record) + b"\n")
        fresh[(system.name, item.id)] = record
        notify(record)

    await asyncio.gather(*(one(system, item) for system, item in todo))
    ordered: list[ItemRecord] = []
    for system in systems:
        for item in items:
            key = (system.name, item.id)
            record = fresh.get(key) or done.get(key)
            if record is not None:
                ordered.append(record)
    return ordered


def _end_torn_line(path: Path) -> None:
    """After a crash mid-write, start new records on a line of their own."""
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as stream:
            stream.seek(-1, 2)
            if stream.read(1) != b"\n":
                stream.write(b"\n")


async def _run_one(
    system: SystemSpec,
    item: EvalItem,
    backend: Backend,
    cache: CallCache,
    grade_context: GradeContext | None,
) -> ItemRecord:
    key = CallCache.key(system.name, system.target, item.id, item.prompt)
    answer = cache.get(key)
    if answer is None:
        answer = await backend.ask(system, item.prompt)
        cache.put(key, answer)
    return await _graded(system, item, answer, grade_context)


async def _graded(
    system: SystemSpec, item: EvalItem, answer: Answer, grade_context: GradeContext | None
) -> ItemRecord:
    record = ItemRecord(
        system=system.name,
        item_id=item.id,
        category=item.category,
        answer=answer.text,
        cost_usd=answer.cost_usd,
        latency_ms=answer.latency_ms,
        tokens_in=answer.tokens_in,
        tokens_out=answer.tokens_out,
        error=answer.error,
    )
    if answer.error is not None or answer.text is None:
        return record
    graded = await grade(answer.text, item, grade_context)
    return msgspec.structs.replace(
        record, correct=graded.correct, extracted=graded.extracted, grade_detail=graded.detail
    )


def comparisons_for(
    records: Sequence[ItemRecord], summaries: Sequence[SystemSummary]
) -> list[Comparison]:
    """Fusion against the best single member and against the judge alone (those present)."""
    fusion = next((s.system for s in summaries if s.system.startswith("fusion:")), None)
    if fusion is None:
        return []
    baselines = [best_single(summaries)]
    baselines += [s.system for s in summaries if s.system.startswith("judge_alone:")]
    return [compare(records, fusion, baseline) for baseline in baselines if baseline is not None]


def write_report(
    records: Sequence[ItemRecord], *, out_dir: Path, dataset: str, panel: str, n_items: int
) -> EvalOutcome:
    """Summaries, comparisons, ``report.md``, ``chart.png`` and ``summary.json`` in ``out_dir``."""
    summaries = summarize(records)
    comparisons = comparisons_for(records, summaries)
    report_path, chart_path = out_dir / "report.md", out_dir / "chart.png"
    report_path.write_text(
        render_markdown(
            summaries, comparisons,
            title=f"Fusion eval: {panel} on {dataset}", dataset=dataset, panel=panel,
            n_items=n_items,
        )
    )  # fmt: skip
    render_chart(summaries, chart_path)
    summary = {"summaries": summaries, "comparisons": comparisons}
    (out_dir / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(summary)))
    return EvalOutcome(
        records=list(records),
        summaries=summaries,
        comparisons=comparisons,
        report_path=report_path,
        chart_path=chart_path,
    )
