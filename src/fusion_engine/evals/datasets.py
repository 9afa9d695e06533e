"""Benchmark datasets: fetch each benchmark's raw records once, cache them, build eval items.

Two ways to fetch:

* ``gsm8k``, ``humaneval`` and ``math`` (MATH-500) are single files fetched over plain HTTP.
* ``mmlu`` and ``gpqa`` come from the Hugging Face Hub through the ``datasets`` library (the
  ``eval-hub`` extra), imported only when one of them is actually fetched.

The raw file is cached as ``<cache_dir>/<benchmark>/<file name>``; HTTP files keep the upstream's
own name, so a file downloaded by hand can be dropped in when this machine is offline. Building
items is pure: the same records and seed always give the same items.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import os
import random
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from http.client import HTTPException
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeVar
from urllib.error import HTTPError, URLError

import msgspec

from .. import __version__
from ..errors import FusionError
from .items import EvalItem, sample

DOWNLOAD_TIMEOUT_S = 60.0
HUB_INSTALL_HINT = "pip install 'fusion-engine[eval-hub]'"
LETTERS = "ABCD"

Record = Mapping[str, Any]
_T = TypeVar("_T")


class DatasetError(FusionError):
    """A benchmark could not be fetched, read or turned into items; the message says what to do."""

    code = "dataset_error"


class UrlSource(msgspec.Struct, frozen=True, kw_only=True):
    """A single JSONL file (gzipped when ``filename`` ends in ``.gz``) fetched over HTTP."""

    url: str
    filename: str

    @property
    def where(self) -> str:
        """What to name in messages: the URL."""
        return self.url


class HubSource(msgspec.Struct, frozen=True, kw_only=True):
    """One split of a Hugging Face Hub dataset, loaded with the ``datasets`` library."""

    path: str
    config: str
    split: str

    @property
    def where(self) -> str:
        """What to name in messages: the dataset's page on the Hub."""
        return f"https://huggingface.co/datasets/{self.path}"

    @property
    def filename(self) -> str:
        """The cache file the split is exported to, as JSONL."""
        return f"{self.config}-{self.split}.jsonl"


class Builder(Protocol):
    """Turns raw records into items; pure, and deterministic for a given ``seed``."""

    def __call__(self, records: Sequence[Record], *, seed: int) -> list[EvalItem]: ...


class Benchmark(msgspec.Struct, frozen=True, kw_only=True):
    """A benchmark: where its raw records come from and how they become items."""

    name: str
    source: UrlSource | HubSource
    build: Builder


Fetch = Callable[[Benchmark], bytes]
"""Returns a benchmark's raw file as bytes (network errors surface as ``OSError``)."""


# Raw record formats: converting into these checks every field once, with a path in the error.
class _Gsm8kRecord(msgspec.Struct):
    question: str
    answer: str


class _HumanEvalRecord(msgspec.Struct):
    task_id: str
    prompt: str
    test: str
    entry_point: str


class _MathRecord(msgspec.Struct):
    problem: str
    answer: str
    unique_id: str
    subject: str = ""


class _MmluRecord(msgspec.Struct):
    question: str
    choices: list[str]
    answer: int
    subject: str = ""


class _GpqaRecord(msgspec.Struct):
    question: str = msgspec.field(name="Question")
    correct: str = msgspec.field(name="Correct Answer")
    incorrect_1: str = msgspec.field(name="Incorrect Answer 1")
    incorrect_2: str = msgspec.field(name="Incorrect Answer 2")
    incorrect_3: str = msgspec.field(name="Incorrect Answer 3")
    record_id: str | None = msgspec.field(default=None, name="Record ID")
    domain: str | None = msgspec.field(default=None, name="High-level domain")


_GSM8K_INSTRUCTION = (
    "Solve the problem step by step. Finish with a last line of the form "
    '"#### <number>" giving only the final numeric answer.'
)
# Python comments, so the prompt stays valid Python: a grader may run it ahead of the answer to
# keep the original imports, or to complete a reply that is only the function's body.
_HUMANEVAL_INSTRUCTION = (
    "# Complete the following Python function. Reply with the complete function (its\n"
    "# signature, body and any imports it needs) in a single ```python code block."
)
_MATH_INSTRUCTION = "Solve the problem, then put your final answer within \\boxed{}."
_CHOICE_INSTRUCTION = (
    'Choose the correct option. End your response with a last line of the form "Answer: X", '
    "where X is A, B, C or D."
)

_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(dict[str, Any]).decode


def _typed(records: Sequence[Record], kind: type[_T], benchmark: str) -> list[_T]:
    """Convert raw records to their struct, naming the first bad record and field."""
    typed: list[_T] = []
    for index, record in enumerate(records):
        try:
            typed.append(msgspec.convert(dict(record), kind))
        except msgspec.ValidationError as exc:
            raise DatasetError(f"{benchmark} record {index}: {exc}") from exc
    return typed


def _choice_prompt(question: str, options: Sequence[str]) -> str:
    listed = "\n".join(
        f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=True)
    )
    return f"{question.strip()}\n\n{listed}\n\n{_CHOICE_INSTRUCTION}"


def _gsm8k_target(answer: str, index: int) -> str:
    """The number after the last ``####``, without thousands separators (``1,234`` -> ``1234``)."""
    _, marker, number = answer.rpartition("####")
    number = number.strip().replace(",", "")
    if not marker or not number:
        raise DatasetError(f"gsm8k record {index}: the answer does not end with '#### <number>'")
    return number


def _build_gsm8k(records: Sequence[Record], *, seed: int = 0) -> list[EvalItem]:
    """GSM8K: grade-school word problems answered with a final ``#### N`` line."""
    return [
        EvalItem(
            id=f"gsm8k/{index}",
            prompt=f"{record.question.strip()}\n\n{_GSM8K_INSTRUCTION}",
            target=_gsm8k_target(record.answer, index),
            grader="numeric",
            category="gsm8k",
        )
        for index, record in enumerate(_typed(records, _Gsm8kRecord, "gsm8k"))
    ]


def _build_humaneval(records: Sequence[Record], *, seed: int = 0) -> list[EvalItem]:
    """HumanEval: complete a function; the target is its tests plus the call that runs them."""
    return [
        EvalItem(
            id=record.task_id,
            prompt=f"{_HUMANEVAL_INSTRUCTION}\n\n{record.prompt}",
            target=f"{record.test}\n\ncheck({record.entry_point})\n",
            grader="code_exec",
            category="humaneval",
        )
        for record in _typed(records, _HumanEvalRecord, "humaneval")
    ]


def _build_math(records: Sequence[Record], *, seed: int = 0) -> list[EvalItem]:
    """MATH-500: competition problems answered in ``\\boxed{}``; one category per subject."""
    return [
        EvalItem(
            id=record.unique_id,
            prompt=f"{record.problem.strip()}\n\n{_MATH_INSTRUCTION}",
            target=record.answer,
            grader="math",
            category=record.subject,
        )
        for record in _typed(records, _MathRecord, "math")
    ]


def _build_mmlu(records: Sequence[Record], *, seed: int = 0) -> list[EvalItem]:
    """MMLU: four-option questions in 57 subjects; the target is the correct letter."""
    items: list[EvalItem] = []
    for index, record in enumerate(_typed(records, _MmluRecord, "mmlu")):
        if len(record.choices) != len(LETTERS) or not 0 <= record.answer < len(LETTERS):
            raise DatasetError(f"mmlu record {index}: expected 4 choices and an answer in 0..3")
        items.append(
            EvalItem(
                id=f"mmlu/{index}",
                prompt=_choice_prompt(record.question, record.choices),
                target=LETTERS[record.answer],
                grader="multiple_choice",
                category=record.subject,
            )
        )
    return items


def _build_gpqa(records: Sequence[Record], *, seed: int = 0) -> list[EvalItem]:
    """GPQA: the correct answer always comes first upstream, so each item's options are shuffled."""
    items: list[EvalItem] = []
    for index, record in enumerate(_typed(records, _GpqaRecord, "gpqa")):
        item_id = f"gpqa/{record.record_id or index}"
        options = [record.correct, record.incorrect_1, record.incorrect_2, record.incorrect_3]
        order = list(range(len(options)))
        # A str seed is hashed with SHA-512, not hash(), so the order is the same in every run.
        random.Random(f"{seed}:{item_id}").shuffle(order)
        items.append(
            EvalItem(
                id=item_id,
                prompt=_choice_prompt(record.question, [options[i].strip() for i in order]),
                target=LETTERS[order.index(0)],
                grader="multiple_choice",
                category=record.domain or "gpqa",
            )
        )
    return items


_GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl"
_HUMANEVAL_URL = (
    "https://raw.githubusercontent.com/openai/human-eval/master/data/HumanEval.jsonl.gz"
)
_MATH500_URL = "https://huggingface.co/datasets/HuggingFaceH4/MATH-500/resolve/main/test.jsonl"

BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType(
    {
        benchmark.name: benchmark
        for benchmark in (
            Benchmark(
                name="gsm8k",
                source=UrlSource(url=_GSM8K_URL, filename="test.jsonl"),
                build=_build_gsm8k,
            ),
            Benchmark(
                name="humaneval",
                source=UrlSource(url=_HUMANEVAL_URL, filename="HumanEval.jsonl.gz"),
                build=_build_humaneval,
            ),
            Benchmark(
                name="math",
                source=UrlSource(url=_MATH500_URL, filename="test.jsonl"),
                build=_build_math,
            ),
            Benchmark(
                name="mmlu",
                source=HubSource(path="cais/mmlu", config="all", split="test"),
                build=_build_mmlu,
            ),
            Benchmark(
                name="gpqa",
                source=HubSource(path="Idavidrein/gpqa", config="gpqa_diamond", split="train"),
                build=_build_gpqa,
            ),
        )
    }
)
"""Every benchmark ``prepare`` knows, by name."""


def default_cache_dir() -> Path:
    """Where raw downloads are kept unless told otherwise: ``~/.cache/fusion-engine/evals``."""
    return Path.home() / ".cache" / "fusion-engine" / "evals"


def download(benchmark: Benchmark, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """Fetch a benchmark's raw file: an HTTP GET, or a Hub split exported as JSONL.

    Raises:
        OSError: the network failed (``URLError``, timeout); ``prepare`` words the message.
        DatasetError: the ``datasets`` library is missing, or the Hub refused the dataset.
    """
    if isinstance(benchmark.source, HubSource):
        return _load_from_hub(benchmark.source)
    request = urllib.request.Request(
        benchmark.source.url, headers={"User-Agent": f"fusion-engine/{__version__}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data: bytes = response.read()
    return data


def _load_from_hub(source: HubSource) -> bytes:
    try:
        hub = importlib.import_module("datasets")
    except ImportError as exc:
        raise DatasetError(
            f"loading {source.path} needs the `datasets` library: {HUB_INSTALL_HINT}"
        ) from exc
    if not hasattr(hub, "load_dataset"):  # e.g. a folder named datasets/ on sys.path
        found = getattr(hub, "__file__", None) or ", ".join(getattr(hub, "__path__", []))
        raise DatasetError(
            f"`import datasets` found {found}, not the Hugging Face library: {HUB_INSTALL_HINT}"
        )
    try:
        rows = hub.load_dataset(source.path, source.config, split=source.split)
    except Exception as exc:  # the Hub raises many unrelated types; sort them by what helps
        if _is_gated(exc):
            raise DatasetError(
                f"{source.path} is a gated dataset: accept its terms at {source.where}, then run "
                "`huggingface-cli login` (or set HF_TOKEN)"
            ) from exc
        if isinstance(exc, OSError):
            raise  # a network failure: prepare() words it like any other download's
        raise DatasetError(
            f"the Hugging Face Hub could not load {source.path} "
            f"({source.config}, split {source.split}): {_one_line(exc)}"
        ) from exc
    return b"".join(_encode(dict(row)) + b"\n" for row in rows)


def _is_gated(exc: BaseException) -> bool:
    """``datasets`` wraps huggingface_hub's GatedRepoError; look along the cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == "GatedRepoError" or "gated" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _one_line(value: object) -> str:
    """An exception (or a reason) as one line; messages must not wrap a traceback's worth."""
    return " ".join(str(value).split()) or type(value).__name__


def _network_reason(exc: BaseException) -> str:
    """Why a download failed, in a few words (URLError hides the socket error in ``reason``)."""
    reason: object = exc
    if isinstance(exc, URLError) and not isinstance(exc, HTTPError):
        reason = exc.reason
    return "timed out" if isinstance(reason, TimeoutError) else _one_line(reason)


def _parse_records(data: bytes, *, gzipped: bool, where: str, advice: str) -> list[dict[str, Any]]:
    """Decode a (gzipped) JSONL file; an unreadable or empty one is a ``DatasetError``."""
    try:
        text = gzip.decompress(data) if gzipped else data
        records = [_decode_record(line) for line in text.splitlines() if line.strip()]
    except (OSError, EOFError, zlib.error, msgspec.DecodeError) as exc:
        raise DatasetError(
            f"{where} is not a valid JSONL file ({_one_line(exc)}); {advice}"
        ) from exc
    if not records:
        raise DatasetError(f"{where} holds no records; {advice}")
    return records


def _store(path: Path, data: bytes) -> None:
    """Write via a temporary name, so an interrupted run never leaves a truncated 'cached' file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise DatasetError(f"cannot write the cache file {path}: {_one_line(exc)}") from exc


def _records(benchmark: Benchmark, path: Path, fetch: Fetch) -> list[dict[str, Any]]:
    """The benchmark's raw records: from the cache file if present, else fetched and cached."""
    gzipped = path.suffix == ".gz"
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"cannot read the cache file {path}: {_one_line(exc)}") from exc
        return _parse_records(
            data, gzipped=gzipped, where=str(path), advice="delete it to download it again"
        )
    where = benchmark.source.where
    try:
        data = fetch(benchmark)
    except (OSError, HTTPException) as exc:
        raise DatasetError(
            f"could not download {where} ({_network_reason(exc)}); check your connection, "
            f"or fetch the file yourself and save it as {path}"
        ) from exc
    # Parse before caching: an error page saved as the cache would fail every later run.
    records = _parse_records(
        data, gzipped=gzipped, where=f"the download from {where}", advice="try again later"
    )
    _store(path, data)
    return records


def prepare(
    name: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    fetch: Fetch = download,
) -> list[EvalItem]:
    """Build a benchmark's eval items, downloading its raw file on first use.

    Args:
        name: a key of ``BENCHMARKS``.
        limit: keep a random sample of this many items (all when ``None`` or more than exist).
        seed: seeds the sample and any option shuffling; the same seed gives the same items.
        cache_dir: where raw files are kept (default ``default_cache_dir()``).
        fetch: returns the raw file when it is not cached (default: ``download``).

    Raises:
        DatasetError: unknown benchmark, download failed, or the raw file is not as expected.
        ValueError: ``limit`` is below 1.
    """
    benchmark = BENCHMARKS.get(name)
    if benchmark is None:
        raise DatasetError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    path = (cache_dir or default_cache_dir()) / benchmark.name / benchmark.source.filename
    items = benchmark.build(_records(benchmark, path, fetch), seed=seed)
    return sample(items, limit, seed)
