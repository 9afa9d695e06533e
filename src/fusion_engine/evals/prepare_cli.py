"""``python evals/prepare.py BENCH``: fetch a benchmark once and write it as an eval dataset.

Errors a user can fix (no network, gated dataset, missing ``datasets`` library) print one line
on stderr and exit 1; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import FusionError
from .datasets import BENCHMARKS, Fetch, default_cache_dir, download, prepare
from .items import write_items

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
DATASETS_DIR = Path("evals/datasets")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``evals/prepare.py``."""
    parser = argparse.ArgumentParser(
        prog="prepare.py",
        description="Download a benchmark (cached after the first time) and write it as JSONL "
        "eval items.",
    )
    parser.add_argument("bench", choices=sorted(BENCHMARKS), help="the benchmark to prepare")
    parser.add_argument(
        "--limit", type=_positive_int, help="keep a seeded random sample of N items"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for --limit and option shuffling (default 0)"
    )
    parser.add_argument(
        "--out", type=Path, help=f"output JSONL file (default {DATASETS_DIR}/BENCH.jsonl)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help=f"where raw downloads are kept (default {default_cache_dir()})",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, fetch: Fetch = download) -> int:
    """Entry point; ``fetch`` is replaceable so tests never reach the network."""
    args = build_parser().parse_args(argv)
    out: Path = args.out or DATASETS_DIR / f"{args.bench}.jsonl"
    try:
        items = prepare(
            args.bench, limit=args.limit, seed=args.seed, cache_dir=args.cache_dir, fetch=fetch
        )
        count = write_items(out, items)
    except FusionError as error:
        return _fail(error.message)
    except OSError as error:
        return _fail(f"cannot write {out}: {error.strerror or error}")
    except KeyboardInterrupt:
        print("prepare: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"wrote {count} {args.bench} items to {out}")
    return 0


def _fail(message: str) -> int:
    print(f"prepare: error: {message}", file=sys.stderr)
    return EXIT_ERROR
