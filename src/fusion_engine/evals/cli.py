"""``evals/run_eval.py`` and ``fusion eval``: one command line, two doors."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..engine import FusionEngine
from ..errors import FusionError, UnknownPanelError
from ..panels import Panel
from ..protocol import Message
from ..settings import Settings
from .call_cache import CallCache
from .graders import GradeContext
from .items import EvalItem, read_items, sample
from .options import add_arguments
from .records import ItemRecord
from .runner import run_items, write_report
from .systems import (
    Backend,
    GatewayBackend,
    InProcessBackend,
    ask_model,
    gateway_panel,
    systems_for,
)

DATASETS_DIR = Path("evals/datasets")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``evals/run_eval.py``."""
    parser = argparse.ArgumentParser(
        prog="run_eval.py", description="Does the panel beat its best member and its judge?"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    import asyncio

    try:
        return asyncio.run(run(args))
    except FusionError as error:
        Console(stderr=True).print(
            f"run_eval: error: {error.message}", soft_wrap=True, markup=False
        )
        return 1


async def run(args: argparse.Namespace) -> int:
    """Run the eval the arguments describe and print where the report is."""
    items = sample(load_dataset(args.dataset), args.limit, args.seed)
    out_dir = args.out or Path("evals/results") / f"{args.panel}-{Path(args.dataset).stem}"
    async with FusionEngine(settings=Settings.from_environ(os.environ)) as engine:
        panel = await _panel(engine, args)
        backend: Backend
        if args.base_url:
            backend = GatewayBackend(
                engine, panel, _root(args.base_url) + "/v1", _api_key(args), panel.member_timeout_s
            )
        else:
            backend = InProcessBackend(engine, panel)
        systems = systems_for(panel, [k.strip() for k in args.systems.split(",") if k.strip()])
        context = _grade_context(engine, backend, args.grader_model)
        with _progress(len(items) * len(systems), enabled=not args.no_progress) as on_record:
            records = await run_items(
                items, systems, backend,
                out_dir=out_dir, cache=CallCache(args.cache_dir),
                concurrency=args.concurrency, grade_context=context, on_record=on_record,
            )  # fmt: skip
    outcome = write_report(
        records, out_dir=out_dir, dataset=Path(args.dataset).stem, panel=panel.name,
        n_items=len(items),
    )  # fmt: skip
    print(outcome.report_path.read_text())
    records_path = out_dir / "records.jsonl"
    print(f"report: {outcome.report_path}  chart: {outcome.chart_path}  records: {records_path}")
    return 0


def load_dataset(name: str) -> list[EvalItem]:
    """Items from a path, or from ``evals/datasets/<name>.jsonl``.

    Raises:
        FusionError: the dataset is not there (with the command that prepares it).
    """
    path = Path(name)
    if not path.exists():
        path = DATASETS_DIR / f"{name}.jsonl"
    if not path.exists():
        raise FusionError(
            f"no dataset {name!r}: give a JSONL file, or run `python evals/prepare.py {name}`"
        )
    return read_items(path)


async def _panel(engine: FusionEngine, args: argparse.Namespace) -> Panel:
    if not args.base_url:
        if args.panel not in engine.panels:
            raise UnknownPanelError(f"unknown panel {args.panel!r}")
        return engine.panels[args.panel]
    return await gateway_panel(engine, _root(args.base_url), _api_key(args), args.panel)


def _api_key(args: argparse.Namespace) -> str | None:
    key: str | None = args.api_key or os.environ.get("FUSION_API_KEY")
    return key


def _root(base_url: str) -> str:
    """The gateway root from a base URL given with or without ``/v1``."""
    return base_url.rstrip("/").removesuffix("/v1")


def _grade_context(
    engine: FusionEngine, backend: Backend, grader_model: str | None
) -> GradeContext:
    if grader_model is None:
        return GradeContext()
    provider = (
        backend.provider if isinstance(backend, GatewayBackend) else engine.config.default_provider
    )

    async def ask(messages: list[Message]) -> str:
        body = {"model": grader_model, "messages": messages}
        answer = await ask_model(engine, provider, body, 120.0)
        if answer.error is not None or answer.text is None:
            raise FusionError(f"the grader model failed: {answer.error}")
        return answer.text

    return GradeContext(ask_model=ask)


class _progress:
    """A progress bar on stderr: items done, running cost, time left."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self._progress = Progress(
            TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(),
            TextColumn("cost ${task.fields[cost]:.4f}"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not enabled,
        )  # fmt: skip
        self._task = self._progress.add_task("eval", total=total, cost=0.0)
        self._cost = 0.0
        self._started = time.monotonic()

    def __enter__(self) -> _progress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def __call__(self, record: ItemRecord) -> None:
        self._cost += record.cost_usd or 0.0
        self._progress.update(self._task, advance=1, cost=self._cost)


if __name__ == "__main__":
    sys.exit(main())
