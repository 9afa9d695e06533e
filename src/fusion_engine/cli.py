"""The ``fusion`` command: ``fusion run``, ``fusion panels``, ``fusion spend``, ``fusion eval``,
``fusion serve``.

Errors a user can fix (missing key, unknown panel, broken panel file) print one line on stderr
and exit non-zero; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .config import load_config
from .costs import PriceBook, Pricing
from .engine import FusionEngine
from .errors import FusionError, PanelFailedError, StoreUnavailableError
from .keys import key_ring
from .panels import Panel
from .redis_client import SharedRedis
from .results import FusionEvent, FusionResult, JudgeStarted, MemberFinished, PanelResponse
from .settings import Settings
from .spend import Ledger
from .spend_store import RedisSpendStore

EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="fusion", description="Ask a panel of LLMs and have a judge fuse one better answer."
    )
    parser.add_argument("--version", action="version", version=f"fusion-engine {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="fuse one prompt and print the answer")
    run.add_argument("prompt", help="the prompt ('-' reads it from stdin)")
    run.add_argument("-p", "--panel", help="panel name (see `fusion panels`)")
    run.add_argument(
        "-m",
        "--models",
        help="comma-separated model slugs for an ad-hoc panel (needs --judge-model)",
    )
    run.add_argument("-s", "--system", help="a system prompt for the conversation")
    run.add_argument("--judge-model", help="override the panel's judge model")
    run.add_argument("--judge-template", help="override the panel's judge template")
    run.add_argument("--web-search", action="store_true", default=None, help="search the web")
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    run.add_argument(
        "-v", "--verbose", action="store_true", help="also show every member's answer and costs"
    )

    panels = commands.add_parser("panels", help="list the panels")
    panels.add_argument("--json", action="store_true", help="print the panels as JSON")

    spend = commands.add_parser(
        "spend", help="what each key name has spent, and its budget (reads REDIS_URL)"
    )
    spend.add_argument("key", nargs="?", help="one key name (default: every configured key)")
    spend.add_argument("--json", action="store_true", help="print the reports as JSON")

    evaluate = commands.add_parser(
        "eval", help="measure a panel against its members and its judge on a dataset"
    )
    from .evals.options import add_arguments

    add_arguments(evaluate)

    serve = commands.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--host", help="address to bind (FUSION_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (FUSION_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (FUSION_WORKERS, default 1)")
    serve.add_argument(
        "--dev", action="store_true", help="one process with uvicorn, no gunicorn (local use)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusion`` console script."""
    args = build_parser().parse_args(argv)
    err = Console(stderr=True, highlight=False)
    try:
        if args.command == "panels":
            return _panels_command(args)
        if args.command == "serve":
            return serve(args)
        if args.command == "spend":
            return asyncio.run(_spend_command(args))
        if args.command == "eval":
            from .evals.cli import run as run_eval

            return asyncio.run(run_eval(args))
        return asyncio.run(_run_command(args, err))
    except FusionError as error:
        err.print(f"fusion: error: {escape(error.message)}", soft_wrap=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.print("fusion: interrupted")
        return 130


def serve(args: argparse.Namespace) -> int:
    """Check the configuration here, then hand over to gunicorn (or uvicorn with --dev)."""
    from .server.serving import run_server

    overrides = {
        name: str(value)
        for name, value in (
            ("FUSION_HOST", args.host), ("FUSION_PORT", args.port),
            ("FUSION_WORKERS", args.workers),
        )
        if value is not None
    }  # fmt: skip
    return run_server({**os.environ, **overrides}, dev=args.dev)


def _panels_command(args: argparse.Namespace) -> int:
    settings = Settings.from_environ(os.environ)
    engine = FusionEngine(settings=settings)
    panels = list(engine.panels.values())
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(panels)).decode() + "\n")
        return 0
    table = Table(title="Panels", title_justify="left")
    for column in ("panel", "members", "judge", "estimated cost"):
        table.add_column(column)
    for panel in panels:
        table.add_row(
            panel.name,
            "\n".join(member.slug for member in panel.models),
            f"{panel.judge_model}\n[dim]{panel.judge_template}[/dim]",
            _estimated_cost(panel),
        )
    _console().print(table)
    return 0


async def _spend_command(args: argparse.Namespace) -> int:
    """Every configured key name's spend (or one's), read from the Redis the gateways share."""
    settings = Settings.from_environ(os.environ)
    config = load_config(settings, need_keys=False)
    ring = key_ring(settings.server_api_keys, config.keys, config.gateway.rate_limit)
    names = [args.key] if args.key else ring.names
    policies = [ring.configured(name) for name in names]
    if settings.redis_url is None:
        raise StoreUnavailableError(
            "without REDIS_URL each gateway keeps spend in its own memory: set REDIS_URL to the "
            "gateways' Redis, or ask a gateway with the key itself (GET /v1/spend)"
        )
    redis = SharedRedis.connect(settings.redis_url)
    try:
        ledger = Ledger(RedisSpendStore(redis), Pricing(config.gateway.prices, PriceBook()))
        reports = [await ledger.report(policy) for policy in policies]
    finally:
        await redis.aclose()
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(reports)).decode() + "\n")
        return 0
    table = Table(title="Spend by key (USD)", title_justify="left")
    for column in ("key", "today", "this month", "all time", "estimated", "budget", "left"):
        table.add_column(column, justify="left" if column == "key" else "right")
    for report in reports:
        budget = report.budget
        table.add_row(
            report.key, f"{report.day_usd:.4f}", f"{report.month_usd:.4f}",
            f"{report.total_usd:.4f}", f"{report.estimated_usd:.4f}",
            f"{budget.limit_usd:.2f} / {budget.per}" if budget else "-",
            f"{budget.remaining_usd:.4f}" if budget else "-",
        )  # fmt: skip
    _console().print(table)
    unpriced = sum(report.unpriced_calls for report in reports)
    if unpriced:
        _console(stderr=True).print(
            f"{unpriced} calls had no reported cost and no price: add them to prices: in the "
            "gateway config"
        )
    return 0


def _console(*, stderr: bool = False) -> Console:
    """Stdout (or stderr); wide when it is not a terminal, so piped or redirected tables keep
    whole model names."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, soft_wrap=True, width=160)
    return console


def _estimated_cost(panel: Panel) -> str:
    cost = panel.estimated_cost_per_query
    if cost is None:
        return "-"
    return f"${_amount(cost.min)}–{_amount(cost.max)} / {cost.unit}"


def _amount(value: float) -> str:
    return f"{value:.2f}" if value == 0 or value >= 0.1 else f"{value:.3f}"


async def _run_command(args: argparse.Namespace, err: Console) -> int:
    if not args.panel and not args.models:
        err.print("fusion: error: give a panel (-p NAME) or models (-m a,b --judge-model J)")
        return EXIT_USAGE
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    messages = [{"role": "user", "content": prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    panel = args.panel or [slug.strip() for slug in args.models.split(",") if slug.strip()]
    progress = _Progress(err)
    async with FusionEngine() as engine:
        try:
            result = await engine.fuse(
                messages,
                panel=panel,
                judge_model=args.judge_model,
                judge_template=args.judge_template,
                web_search=args.web_search,
                listener=progress,
            )
        except PanelFailedError as failure:
            progress.stop()
            if args.verbose:
                _print_table(_console(stderr=True), failure.responses, None, None)
            raise
        finally:
            progress.stop()
    _print_result(result, as_json=args.json, verbose=args.verbose)
    return 0


class _Progress:
    """Members finishing, on stderr: a live status on a terminal, plain lines elsewhere."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._status = console.status("asking the panel…") if console.is_terminal else None
        if self._status is not None:
            self._status.start()

    def __call__(self, event: FusionEvent) -> None:
        if isinstance(event, MemberFinished):
            response = event.response
            outcome = "ok" if response.ok else f"failed: {response.error}"
            line = (
                f"[{event.finished}/{event.total}] {response.model}: {outcome} "
                f"({response.latency_ms / 1000:.1f}s)"
            )
            self._console.print(escape(line), soft_wrap=True)
        elif isinstance(event, JudgeStarted):
            verb = "judging with" if event.position == 0 else "judge failed; falling back to"
            message = f"{verb} {event.model}…"
            if self._status is not None:
                self._status.update(message)
            else:
                self._console.print(escape(message), soft_wrap=True)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _print_result(result: FusionResult, *, as_json: bool, verbose: bool) -> None:
    """The answer alone on stdout (so `fusion run ... > answer.txt` keeps just the answer); with
    ``verbose``, the members' answers and the cost table around it on stderr."""
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")
        return
    err = _console(stderr=True)
    if verbose:
        for member in result.panel_responses:
            err.rule(f"[bold]{escape(member.model)}[/bold] (member {member.index + 1})")
            err.print(escape(member.content or _tool_calls_text(member) or f"[{member.error}]"))
        err.rule("[bold]fused answer[/bold]")
    if result.degraded:
        err.print(f"note: {result.degraded}: a member answer stands in")
    _console().print(escape(result.answer or "") or _tool_calls_text(result) or "")
    if verbose:
        _print_table(err, result.panel_responses, result.judge_response, result)


def _tool_calls_text(item: PanelResponse | FusionResult) -> str:
    calls = item.tool_calls or []
    return "\n".join(f"tool call: {c.function.name}({c.function.arguments})" for c in calls)


def _print_table(
    console: Console,
    members: Sequence[PanelResponse],
    judge: PanelResponse | None,
    result: FusionResult | None,
) -> None:
    table = Table(title="Calls", title_justify="left")
    for column, justify in (
        ("role", "left"), ("model", "left"), ("status", "left"), ("latency", "right"),
        ("tokens in", "right"), ("tokens out", "right"), ("cost", "right"),
    ):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = [(f"member {m.index + 1}", m) for m in members]
    if result is not None:
        rows += [("judge" if a is judge else "judge (failed)", a) for a in result.judge_attempts]
    for role, call in rows:
        table.add_row(
            role,
            escape(call.model),
            "ok" if call.ok else escape(f"{call.error_kind}: {call.error}"),
            f"{call.latency_ms / 1000:.2f}s",
            str(call.tokens_in),
            str(call.tokens_out),
            _money(call.cost_usd),
        )
    if result is not None:
        table.add_section()
        table.add_row(
            "total", "", result.degraded or "", f"{result.total_latency_ms / 1000:.2f}s",
            str(result.tokens_in), str(result.tokens_out), _money(result.total_cost),
        )  # fmt: skip
    console.print(table)


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


if __name__ == "__main__":
    sys.exit(main())
