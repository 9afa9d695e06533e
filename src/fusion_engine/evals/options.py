"""The eval's command-line options, importable without the eval extra's heavy libraries
(``fusion`` builds its whole parser at every start)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CACHE = Path.home() / ".cache" / "fusion-engine" / "eval-calls"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval's options (shared by ``run_eval.py`` and ``fusion eval``)."""
    parser.add_argument("--panel", required=True, help="panel to evaluate (e.g. budget)")
    parser.add_argument(
        "--dataset", required=True,
        help="a JSONL file, or a name in evals/datasets/ (e.g. sample, gsm8k)",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, help="a seeded random sample of N items")
    parser.add_argument("--seed", type=int, default=0, help="seed for --limit (default 0)")
    parser.add_argument(
        "--systems", default="fusion,single,judge_alone",
        help="comma-separated: fusion, single, judge_alone (default: all three)",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight (default 4)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default evals/results/PANEL-DATASET)"
    )
    parser.add_argument(
        "--base-url", help="evaluate through a running gateway (e.g. http://127.0.0.1:8000)"
    )
    parser.add_argument("--api-key", help="the gateway's key (default: FUSION_API_KEY)")
    parser.add_argument("--grader-model", help="model for llm_judge items (a neutral one)")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where calls are cached on disk"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
