"""Benchmark datasets: builders on raw fixtures, sampling, caching, download errors, the CLI."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import random
import socket
import subprocess
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.error import URLError

import msgspec
import pytest

from fusion_engine.errors import FusionError
from fusion_engine.evals.datasets import (
    BENCHMARKS,
    Benchmark,
    DatasetError,
    UrlSource,
    download,
    prepare,
)
from fusion_engine.evals.items import EvalItem, read_items
from fusion_engine.evals.prepare_cli import main

from .helpers import ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "evals"
RAW_FILES = {
    "gsm8k": "gsm8k_test.jsonl",
    "humaneval": "HumanEval.jsonl.gz",
    "math": "math500_test.jsonl",
}
HUB_FILES = {"cais/mmlu": "mmlu_all_test.json", "Idavidrein/gpqa": "gpqa_diamond_train.json"}
GATED_MESSAGE = "Dataset 'Idavidrein/gpqa' is a gated dataset on the Hub. You must be authenticated to access it."


def fixture_fetch(benchmark: Benchmark) -> bytes:
    """Stands in for the downloader: the benchmark's raw fixture file, byte for byte."""
    return (FIXTURES / RAW_FILES[benchmark.name]).read_bytes()


def hub_rows(path: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((FIXTURES / HUB_FILES[path]).read_text())
    return rows


def humaneval_records() -> list[dict[str, Any]]:
    text = gzip.decompress((FIXTURES / "HumanEval.jsonl.gz").read_bytes()).decode()
    return [json.loads(line) for line in text.splitlines()]


def failing_fetch(error: BaseException) -> Callable[[Benchmark], bytes]:
    def fetch(benchmark: Benchmark) -> bytes:
        raise error

    return fetch


class DatasetNotFoundError(FileNotFoundError):
    """Mirrors ``datasets.exceptions.DatasetNotFoundError``, which is an OSError too."""


def install_fake_hub(
    monkeypatch: pytest.MonkeyPatch, load: Callable[..., list[dict[str, Any]]]
) -> None:
    """Put a stand-in ``datasets`` module with this ``load_dataset`` in sys.modules."""
    module = types.ModuleType("datasets")
    monkeypatch.setattr(module, "load_dataset", load, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", module)


def install_failing_hub(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """A stand-in ``datasets`` whose ``load_dataset`` raises ``error`` whatever is asked."""

    def load_dataset(path: str, name: str, *, split: str) -> list[dict[str, Any]]:
        raise error

    install_fake_hub(monkeypatch, load_dataset)


@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """A fake Hub serving the mmlu/gpqa fixtures; returns the (path, config, split) asked for."""
    calls: list[tuple[str, str, str]] = []

    def load_dataset(path: str, name: str, *, split: str) -> list[dict[str, Any]]:
        calls.append((path, name, split))
        return hub_rows(path)

    install_fake_hub(monkeypatch, load_dataset)
    return calls


def option_lines(prompt: str) -> dict[str, str]:
    """The ``X. text`` option lines of a multiple-choice prompt, by letter."""
    return {
        line[0]: line[3:]
        for line in prompt.splitlines()
        if line[:3] in {"A. ", "B. ", "C. ", "D. "}
    }


def gsm8k_bytes(count: int) -> bytes:
    records = [
        {"question": f"What is {n} + 1?", "answer": f"{n} + 1 = {n + 1}\n#### {n + 1}"}
        for n in range(count)
    ]
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


# Builders, each on its benchmark's raw fixture


def test_gsm8k_items_parse_the_number_after_the_marker(tmp_path: Path) -> None:
    """GSM8K: target is the number after ``####`` without commas; prompt asks for that line."""
    items = prepare("gsm8k", cache_dir=tmp_path, fetch=fixture_fetch)
    assert [item.target for item in items] == ["7", "1234", "-3"]
    assert [item.id for item in items] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"]
    assert {(item.grader, item.category) for item in items} == {("numeric", "gsm8k")}
    assert items[0].prompt.startswith("Janet has 3 apples and buys 4 more at the market.")
    assert '"#### <number>"' in items[0].prompt
    assert "<<" not in items[1].prompt  # the worked solution never leaks into the prompt


def test_gsm8k_answer_without_marker_is_an_error() -> None:
    """A GSM8K answer with no ``#### N`` line names the record instead of guessing."""
    build = BENCHMARKS["gsm8k"].build
    with pytest.raises(DatasetError, match=r"gsm8k record 0: .*'#### <number>'"):
        build([{"question": "Q?", "answer": "no marker here"}], seed=0)


def test_humaneval_target_runs_the_tests_against_the_entry_point(tmp_path: Path) -> None:
    """HumanEval: the target is the test code plus ``check(entry_point)``, and really checks."""
    items = prepare("humaneval", cache_dir=tmp_path, fetch=fixture_fetch)
    records = humaneval_records()
    assert [item.id for item in items] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    for item, record in zip(items, records, strict=True):
        assert item.grader == "code_exec" and item.category == "humaneval"
        assert "```python" in item.prompt and item.prompt.endswith(record["prompt"])
        compile(item.prompt, item.id, "exec")  # the instruction is a comment: still valid Python
        assert item.target == record["test"] + f"\n\ncheck({record['entry_point']})\n"
        exec(record["prompt"] + record["canonical_solution"] + item.target, {})
    with pytest.raises(AssertionError):
        exec(records[0]["prompt"] + "    return a - b\n" + items[0].target, {})


def test_math_items_ask_for_boxed_answer_by_subject(tmp_path: Path) -> None:
    """MATH-500: target is the answer field, category the subject, prompt asks for \\boxed{}."""
    items = prepare("math", cache_dir=tmp_path, fetch=fixture_fetch)
    assert [item.target for item in items] == ["\\left( 3, \\frac{\\pi}{2} \\right)", "6", "2"]
    assert [item.category for item in items] == ["Precalculus", "Algebra", "Number Theory"]
    assert items[0].id == "test/precalculus/807.json"
    assert all(item.grader == "math" and "\\boxed{}" in item.prompt for item in items)
    assert "\\boxed{\\left" not in items[0].prompt  # the solution is not in the prompt


def test_mmlu_items_come_from_the_hub_split(
    tmp_path: Path, hub_calls: list[tuple[str, str, str]]
) -> None:
    """MMLU: loaded as cais/mmlu "all"/"test"; options listed A–D, target the correct letter."""
    items = prepare("mmlu", cache_dir=tmp_path)
    assert hub_calls == [("cais/mmlu", "all", "test")]
    assert [item.target for item in items] == ["B", "D", "A"]
    assert [item.category for item in items] == ["abstract_algebra", "astronomy", "anatomy"]
    assert option_lines(items[0].prompt) == {"A": "0", "B": "2", "C": "1", "D": "3"}
    assert all(item.grader == "multiple_choice" and "Answer: X" in item.prompt for item in items)


def test_hub_split_is_cached_so_datasets_is_not_needed_again(
    tmp_path: Path, hub_calls: list[tuple[str, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a Hub split is cached, preparing it again neither imports ``datasets`` nor loads."""
    first = prepare("mmlu", cache_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert prepare("mmlu", cache_dir=tmp_path) == first
    assert len(hub_calls) == 1
    assert (tmp_path / "mmlu" / "all-test.jsonl").is_file()


def test_gpqa_target_letter_points_at_the_correct_answer(
    tmp_path: Path, hub_calls: list[tuple[str, str, str]]
) -> None:
    """GPQA: after shuffling, the target's option line is the correct answer."""
    items = prepare("gpqa", cache_dir=tmp_path)
    assert hub_calls == [("Idavidrein/gpqa", "gpqa_diamond", "train")]
    for item, row in zip(items, hub_rows("Idavidrein/gpqa"), strict=True):
        options = option_lines(item.prompt)
        assert options[item.target] == row["Correct Answer"]
        assert sorted(options.values()) == sorted(
            row[key].strip()
            for key in (
                "Correct Answer",
                "Incorrect Answer 1",
                "Incorrect Answer 2",
                "Incorrect Answer 3",
            )
        )
        assert item.id == f"gpqa/{row['Record ID']}"
        assert item.category == row["High-level domain"] and item.grader == "multiple_choice"


def test_gpqa_shuffle_is_deterministic_per_seed() -> None:
    """Same records and seed give identical items; another seed reorders; all letters occur."""
    build = BENCHMARKS["gpqa"].build
    rows = hub_rows("Idavidrein/gpqa")
    assert build(rows, seed=0) == build(rows, seed=0)
    assert [item.prompt for item in build(rows, seed=0)] != [
        item.prompt for item in build(rows, seed=5)
    ]
    many = [{**rows[0], "Record ID": f"rec{n}"} for n in range(40)]
    assert {item.target for item in build(many, seed=0)} == set("ABCD")


def test_builder_names_a_record_with_a_missing_field() -> None:
    """A raw record in an unexpected shape is a DatasetError naming the record and field."""
    with pytest.raises(DatasetError, match=r"math record 1: .*unique_id"):
        BENCHMARKS["math"].build(
            [{"problem": "p", "answer": "1", "unique_id": "a"}, {"problem": "p", "answer": "1"}],
            seed=0,
        )


# prepare(): sampling and caching


def test_limit_takes_a_seeded_sample_stable_across_runs(tmp_path: Path) -> None:
    """``limit`` keeps ``Random(seed).sample`` of the items, in dataset order, the same every run."""

    def fetch(benchmark: Benchmark) -> bytes:
        return gsm8k_bytes(30)

    first = prepare("gsm8k", limit=5, seed=3, cache_dir=tmp_path / "a", fetch=fetch)
    again = prepare("gsm8k", limit=5, seed=3, cache_dir=tmp_path / "b", fetch=fetch)
    expected = sorted(random.Random(3).sample(range(30), 5))
    assert first == again
    assert [item.id for item in first] == [f"gsm8k/{n}" for n in expected]
    assert prepare("gsm8k", limit=5, seed=4, cache_dir=tmp_path / "a", fetch=fetch) != first
    assert len(prepare("gsm8k", limit=100, cache_dir=tmp_path / "a", fetch=fetch)) == 30


def test_limit_below_one_is_rejected(tmp_path: Path) -> None:
    """A limit of zero is a caller mistake, not an empty dataset."""
    with pytest.raises(ValueError, match="at least 1"):
        prepare("gsm8k", limit=0, cache_dir=tmp_path, fetch=fixture_fetch)


def test_download_is_cached_and_reused(tmp_path: Path) -> None:
    """Two prepare() calls fetch once; the raw file is cached under its upstream name."""
    calls: list[str] = []

    def fetch(benchmark: Benchmark) -> bytes:
        calls.append(benchmark.name)
        return fixture_fetch(benchmark)

    first = prepare("humaneval", cache_dir=tmp_path, fetch=fetch)
    second = prepare("humaneval", cache_dir=tmp_path, fetch=fetch)
    assert calls == ["humaneval"]
    assert first == second
    cached = tmp_path / "humaneval" / "HumanEval.jsonl.gz"
    assert cached.read_bytes() == (FIXTURES / "HumanEval.jsonl.gz").read_bytes()
    assert sorted(path.name for path in cached.parent.iterdir()) == ["HumanEval.jsonl.gz"]


def test_a_file_saved_in_the_cache_by_hand_is_used(tmp_path: Path) -> None:
    """Offline: the raw file placed at the cache path is used without fetching."""
    cached = tmp_path / "math" / "test.jsonl"
    cached.parent.mkdir()
    cached.write_bytes((FIXTURES / "math500_test.jsonl").read_bytes())
    items = prepare("math", cache_dir=tmp_path, fetch=failing_fetch(URLError("offline")))
    assert len(items) == 3


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (URLError(socket.gaierror(-2, "Name or service not known")), "Name or service not known"),
        (TimeoutError("timed out"), "timed out"),
    ],
)
def test_network_failure_is_a_one_line_dataset_error(
    tmp_path: Path, error: BaseException, reason: str
) -> None:
    """A failed download names the URL and the cache path to fill by hand, on one line."""
    with pytest.raises(DatasetError) as caught:
        prepare("gsm8k", cache_dir=tmp_path, fetch=failing_fetch(error))
    message = caught.value.message
    assert isinstance(caught.value, FusionError)
    assert message.startswith(f"could not download {BENCHMARKS['gsm8k'].source.where} ")
    assert reason in message and "check your connection" in message
    assert str(tmp_path / "gsm8k" / "test.jsonl") in message
    assert "\n" not in message
    assert not (tmp_path / "gsm8k" / "test.jsonl").exists()


def test_a_download_that_is_not_jsonl_is_not_cached(tmp_path: Path) -> None:
    """An error page served instead of the file fails now and is not kept as the cache."""
    with pytest.raises(DatasetError, match="is not a valid JSONL file"):
        prepare("gsm8k", cache_dir=tmp_path, fetch=lambda benchmark: b"<html>rate limited</html>")
    assert not (tmp_path / "gsm8k").exists()


def test_a_corrupt_cache_file_says_to_delete_it(tmp_path: Path) -> None:
    """A cached file that does not decode names itself and says how to recover."""
    cached = tmp_path / "humaneval" / "HumanEval.jsonl.gz"
    cached.parent.mkdir()
    cached.write_bytes(b"not gzip at all")
    with pytest.raises(
        DatasetError, match=r"HumanEval\.jsonl\.gz is not a valid JSONL file .*delete it"
    ):
        prepare("humaneval", cache_dir=tmp_path, fetch=fixture_fetch)


def test_an_unwritable_cache_is_a_dataset_error(tmp_path: Path) -> None:
    """A cache directory that cannot be created names the cache file, on one line."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(
        DatasetError, match=r"cannot write the cache file .*not-a-dir/gsm8k/test\.jsonl"
    ):
        prepare("gsm8k", cache_dir=blocker, fetch=fixture_fetch)


def test_unknown_benchmark_lists_the_known_ones(tmp_path: Path) -> None:
    """An unknown name is a DatasetError listing every benchmark."""
    with pytest.raises(
        DatasetError,
        match="unknown benchmark 'mnist'; choose one of: gsm8k, humaneval, math, mmlu, gpqa",
    ):
        prepare("mnist", cache_dir=tmp_path, fetch=fixture_fetch)


def test_benchmarks_are_read_only() -> None:
    """BENCHMARKS cannot be changed at run time."""
    with pytest.raises(TypeError):
        BENCHMARKS["mine"] = BENCHMARKS["gsm8k"]  # type: ignore[index]
    assert list(BENCHMARKS) == ["gsm8k", "humaneval", "math", "mmlu", "gpqa"]


# The Hugging Face Hub path


def test_missing_datasets_library_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``datasets``, Hub benchmarks say which extra to install."""
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DatasetError, match=r"pip install 'fusion-engine\[eval-hub\]'"):
        prepare("mmlu", cache_dir=tmp_path)


def test_a_datasets_folder_is_not_mistaken_for_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``datasets`` namespace package (a folder on sys.path) is named, not called."""
    folder = types.ModuleType("datasets")
    folder.__path__ = [str(ROOT / "evals" / "datasets")]
    monkeypatch.setitem(sys.modules, "datasets", folder)
    with pytest.raises(
        DatasetError, match=r"evals/datasets, not the Hugging Face library: pip install"
    ):
        prepare("gpqa", cache_dir=tmp_path)


def test_gated_gpqa_explains_how_to_get_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gated-dataset error says to accept the terms and log in, on one line."""
    install_failing_hub(monkeypatch, DatasetNotFoundError(GATED_MESSAGE))
    with pytest.raises(DatasetError) as caught:
        prepare("gpqa", cache_dir=tmp_path)
    message = caught.value.message
    assert "https://huggingface.co/datasets/Idavidrein/gpqa" in message
    assert "huggingface-cli login" in message and "HF_TOKEN" in message
    assert "\n" not in message


def test_hub_connection_failure_is_a_download_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network error inside ``datasets`` gets the same advice as an HTTP download."""
    install_failing_hub(
        monkeypatch,
        ConnectionError("Couldn't reach 'cais/mmlu' on the Hub (LocalEntryNotFoundError)"),
    )
    with pytest.raises(
        DatasetError,
        match=r"could not download https://huggingface\.co/datasets/cais/mmlu .*check your connection",
    ):
        prepare("mmlu", cache_dir=tmp_path)


def test_other_hub_errors_are_one_line_dataset_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any other failure of ``load_dataset`` names the dataset and the reason."""
    install_failing_hub(
        monkeypatch, ValueError("BuilderConfig 'all' not found.\nAvailable: ['abstract_algebra']")
    )
    with pytest.raises(DatasetError) as caught:
        prepare("mmlu", cache_dir=tmp_path)
    assert caught.value.message == (
        "the Hugging Face Hub could not load cais/mmlu (all, split test): "
        "BuilderConfig 'all' not found. Available: ['abstract_algebra']"
    )


# The real downloader, against 127.0.0.1 only


@pytest.fixture
def local_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving the fixtures directory; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(FIXTURES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""


def _pointed_at(url: str) -> Benchmark:
    return msgspec.structs.replace(
        BENCHMARKS["gsm8k"], source=UrlSource(url=url, filename="test.jsonl")
    )


def test_download_fetches_the_file_over_http(local_server: str) -> None:
    """``download`` returns the served file's bytes unchanged."""
    data = download(_pointed_at(f"{local_server}/gsm8k_test.jsonl"), timeout=5)
    assert data == (FIXTURES / "gsm8k_test.jsonl").read_bytes()


def test_download_from_a_closed_port_raises_urlerror() -> None:
    """A refused connection surfaces as URLError, which prepare() words for the user."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(URLError):
        download(_pointed_at(f"http://127.0.0.1:{port}/test.jsonl"), timeout=5)


# The command line


def test_cli_writes_the_items_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``prepare.py gsm8k --limit 2 --out F`` writes 2 items to F and says so."""
    out = tmp_path / "out" / "gsm8k.jsonl"
    argv = [
        "gsm8k",
        "--limit",
        "2",
        "--seed",
        "1",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(argv, fetch=fixture_fetch) == 0
    items = read_items(out)
    assert len(items) == 2 and all(item.grader == "numeric" for item in items)
    assert capsys.readouterr().out == f"wrote 2 gsm8k items to {out}\n"


def test_cli_default_output_is_evals_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --out, the file is ``evals/datasets/<bench>.jsonl`` under the working directory."""
    monkeypatch.chdir(tmp_path)
    assert main(["math", "--cache-dir", str(tmp_path / "cache")], fetch=fixture_fetch) == 0
    assert len(read_items(tmp_path / "evals" / "datasets" / "math.jsonl")) == 3
    assert "evals/datasets/math.jsonl" in capsys.readouterr().out


def test_cli_error_is_one_stderr_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed download prints one line on stderr, writes nothing, and exits 1."""
    out = tmp_path / "gsm8k.jsonl"
    argv = ["gsm8k", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv, fetch=failing_fetch(URLError("offline"))) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("prepare: error: could not download https://")
    assert captured.err.count("\n") == 1
    assert not out.exists()


def test_cli_rejects_a_zero_limit(capsys: pytest.CaptureFixture[str]) -> None:
    """--limit 0 is a usage error (exit 2), caught before anything is fetched."""
    with pytest.raises(SystemExit) as caught:
        main(["gsm8k", "--limit", "0"], fetch=failing_fetch(AssertionError("fetched")))
    assert caught.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_prepare_script_runs_the_cli() -> None:
    """``python evals/prepare.py --help`` reaches the package's parser."""
    ran = subprocess.run(
        [sys.executable, "evals/prepare.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert "{gpqa,gsm8k,humaneval,math,mmlu}" in ran.stdout and "--cache-dir" in ran.stdout


# The hand-written sample dataset


def test_sample_dataset_covers_every_grader() -> None:
    """``evals/datasets/sample.jsonl`` loads, with the intended mix of graders."""
    items = read_items(ROOT / "evals" / "datasets" / "sample.jsonl")
    assert Counter(item.grader for item in items) == {
        "numeric": 3, "math": 2, "multiple_choice": 2, "exact_match": 1, "contains": 1, "code_exec": 1,
    }  # fmt: skip
    assert all(isinstance(item, EvalItem) and item.prompt and item.target for item in items)


def test_sample_code_item_passes_a_correct_solution() -> None:
    """The sample's code_exec target accepts a right answer and rejects a wrong one."""
    [item] = [
        item
        for item in read_items(ROOT / "evals" / "datasets" / "sample.jsonl")
        if item.grader == "code_exec"
    ]
    compile(item.prompt, item.id, "exec")
    right = "def count_vowels(text):\n    return sum(c in 'aeiouAEIOU' for c in text)\n\n"
    exec(right + item.target, {})
    with pytest.raises(AssertionError):
        exec("def count_vowels(text):\n    return 0\n\n" + item.target, {})
