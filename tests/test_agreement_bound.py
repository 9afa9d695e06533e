"""Agreement scoring is bounded: huge answers cannot stall the event loop (issue 15, item 11)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from fusion_engine import agreement, quorum
from fusion_engine.agreement import SCORED_CHARS, final_answer, measure_agreement, word_set
from fusion_engine.results import PanelResponse

MIB = 1024 * 1024


class CountingPattern:
    """A compiled regex that counts how many characters it was asked to scan."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.scanned = 0

    def findall(self, text: str) -> list[Any]:
        self.scanned += len(text)
        return self.pattern.findall(text)


def huge_answers() -> list[PanelResponse]:
    """Three 20 MiB prose answers, each concluding differently at its very end."""
    body = "the quick brown fox jumps over the lazy dog and keeps running " * (20 * MIB // 62)
    return [
        PanelResponse(index=i, model=f"m{i}", content=body + f" so the answer is {i}")
        for i in range(3)
    ]


def test_scoring_reads_a_bounded_sample_of_each_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """3 x 20 MiB answers: the word and final-answer scans see at most SCORED_CHARS of each."""
    words = CountingPattern(agreement._WORD)
    finals = CountingPattern(agreement._FINAL)
    monkeypatch.setattr(agreement, "_WORD", words)
    monkeypatch.setattr(agreement, "_FINAL", finals)
    answers = huge_answers()
    started = time.perf_counter()
    measured = measure_agreement(answers)
    quorum.best_member_answer(answers)  # the judge-failed stand-in compares word sets too
    elapsed = time.perf_counter() - started
    assert measured is not None
    assert words.scanned <= 3 * 3 * (SCORED_CHARS + 1)
    assert finals.scanned <= 3 * (SCORED_CHARS + 1)
    assert elapsed < 5  # 37 s before the bound; well under a second after (a 10x+ margin)


def test_the_end_of_a_long_answer_still_counts() -> None:
    """A long answer's conclusion sits at its end: the sample keeps the head and the tail."""
    long = "reasoning step " * MIB + "#### 1,234"
    assert final_answer(long) == "1234"
    assert "beginning" in word_set("beginning " + "x " * MIB + " ending")
    assert "ending" in word_set("beginning " + "x " * MIB + " ending")


def test_real_answers_are_scored_whole() -> None:
    """Answers up to SCORED_CHARS (tens of pages) are scored exactly as before."""
    text = " ".join(f"w{i}" for i in range(SCORED_CHARS // 8))
    assert len(text) <= SCORED_CHARS
    assert word_set(text) == frozenset(re.findall(r"\w+", text.lower()))


def test_huge_tool_arguments_are_compared_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """3 x 20 MiB tool-call arguments: none is parsed (compared by a hash of the exact text);
    small arguments are still compared parsed (spacing does not matter)."""
    import json
    import types

    from fusion_engine.protocol import FunctionCall, ToolCall

    parsed: list[int] = []

    def counting_loads(text: str) -> object:
        parsed.append(len(text))
        return json.loads(text)

    monkeypatch.setattr(
        agreement, "json", types.SimpleNamespace(loads=counting_loads, dumps=json.dumps)
    )
    huge = json.dumps({"text": "x" * (20 * MIB)})
    answers = [
        PanelResponse(
            index=i, model="m", tool_calls=[ToolCall(id="c", function=FunctionCall("f", huge))]
        )
        for i in range(3)
    ]
    measured = measure_agreement(answers)
    votes = quorum.tool_votes(answers)
    quorum.best_member_answer(answers)
    assert measured is not None and measured.score == 1.0
    assert [vote.votes for vote in votes] == [3]
    assert max(parsed, default=0) <= SCORED_CHARS
    spaced = ToolCall(id="a", function=FunctionCall("f", '{"a": 1}'))
    tight = ToolCall(id="b", function=FunctionCall("f", '{"a":1}'))
    assert agreement.tool_call_key(spaced) == agreement.tool_call_key(tight)
