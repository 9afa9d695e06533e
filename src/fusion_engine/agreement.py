"""How much the panel agrees, and who stands apart (pure).

Three methods, picked by what the answers are:

- ``tool_calls``: every answer proposes tool calls; two agree when they call the same functions
  with the same (parsed) arguments.
- ``answer``: every answer ends in a short final answer — a number, a choice letter, yes/no —
  or is short itself; two agree when those normalised answers are equal.
- ``text``: prose; word-set overlap (Jaccard), a cheap similarity that needs no model.

For the first two the score is the share of the largest group of equal answers; for prose it is
the mean pairwise similarity. ``outliers`` are the members outside the largest group (or, for
prose, clearly less similar to the others than the rest are).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from itertools import combinations

from .protocol import ToolCall
from .results import Agreement, AgreementMethod, PanelResponse

SHORT_ANSWER_WORDS = 12
#: At most this many characters of an answer are scored: its first and last halves. Tens of
#: pages, so real answers are scored whole, while a 20 MiB answer cannot hold the event loop for
#: seconds (the conclusion, where a final answer sits, is in the tail).
SCORED_CHARS = 64 * 1024
#: A prose member whose mean similarity is this far below the panel's stands apart.
OUTLIER_MARGIN = 0.2

_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FINAL = re.compile(
    r"(?:####|\\boxed\{|answer(?:\s+is)?\s*[:=]?)\s*\(?\**\s*([^\s}*)]+)", re.IGNORECASE
)
_CHOICE = re.compile(r"^\(?([A-J])\)?[.)]?$")
_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}


def measure_agreement(answers: Sequence[PanelResponse]) -> Agreement | None:
    """The agreement of the successful answers, or ``None`` with fewer than two."""
    answers = sorted((a for a in answers if a.ok), key=lambda a: a.index)
    if len(answers) < 2:
        return None
    if all(a.tool_calls for a in answers):
        return _grouped(answers, [_tool_key(a) for a in answers], "tool_calls")
    finals = [final_answer(a.content or "") for a in answers]
    if all(final is not None for final in finals):
        return _grouped(answers, [f or "" for f in finals], "answer")
    return _prose(answers)


def scored_sample(text: str) -> str:
    """What of ``text`` is scored: all of it up to ``SCORED_CHARS``, else its head and tail."""
    if len(text) <= SCORED_CHARS:
        return text
    half = SCORED_CHARS // 2
    return text[:half] + "\n" + text[-half:]


def final_answer(text: str) -> str | None:
    """The normalised final answer of a short or explicitly concluded answer, if it has one."""
    text = scored_sample(text)
    marked = _FINAL.findall(text)
    candidate = marked[-1] if marked else None
    if candidate is None and len(_WORD.findall(text)) <= SHORT_ANSWER_WORDS:
        candidate = text.strip()
    if candidate is None:
        return None
    return _normalise(candidate)


def _normalise(candidate: str) -> str | None:
    cleaned = candidate.strip().strip(".!,;:*\"'`").strip()
    lowered = cleaned.lower()
    if lowered in _YES_NO:
        return _YES_NO[lowered]
    choice = _CHOICE.match(cleaned)
    if choice:
        return choice.group(1).upper()
    numbers: list[str] = _NUMBER.findall(cleaned)
    if numbers:
        value = numbers[-1].replace(",", "")
        try:
            return f"{float(value):g}"
        except ValueError:
            return value
    words: list[str] = _WORD.findall(lowered)
    return " ".join(words) if words else None


def tool_call_key(call: ToolCall) -> str:
    """One call as a comparable key: its function and its parsed arguments (arguments over
    ``SCORED_CHARS`` are compared by a hash of their exact text, not parsed and re-encoded)."""
    raw = call.function.arguments or "{}"
    if len(raw) > SCORED_CHARS:
        return json.dumps(
            [call.function.name, {"sha256": hashlib.sha256(raw.encode()).hexdigest()}]
        )
    try:
        arguments = json.loads(raw)
    except ValueError:
        arguments = raw
    return json.dumps([call.function.name, arguments], sort_keys=True)


def _tool_key(answer: PanelResponse) -> str:
    return json.dumps(sorted(tool_call_key(call) for call in answer.tool_calls or ()))


def _grouped(
    answers: Sequence[PanelResponse], keys: Sequence[str], method: AgreementMethod
) -> Agreement:
    groups: dict[str, list[int]] = {}
    for answer, key in zip(answers, keys, strict=True):
        groups.setdefault(key, []).append(answer.index)
    # The largest group; ties go to the group whose first member comes first in the panel.
    majority = max(groups.values(), key=lambda members: (len(members), -members[0]))
    outliers = [a.index for a in answers if a.index not in majority]
    return Agreement(
        score=len(majority) / len(answers), method=method, majority=majority, outliers=outliers
    )


def _prose(answers: Sequence[PanelResponse]) -> Agreement:
    words = [word_set(a.content or "") for a in answers]
    similarity = {
        (i, j): jaccard(words[i], words[j]) for i, j in combinations(range(len(answers)), 2)
    }
    score = sum(similarity.values()) / len(similarity)

    def closeness(i: int) -> float:
        pairs = [value for (a, b), value in similarity.items() if i in (a, b)]
        return sum(pairs) / len(pairs)

    outliers = [
        answers[i].index
        for i in range(len(answers))
        if len(answers) > 2 and closeness(i) < score - OUTLIER_MARGIN
    ]
    majority = [a.index for a in answers if a.index not in outliers]
    return Agreement(score=round(score, 4), method="text", majority=majority, outliers=outliers)


def word_set(text: str) -> frozenset[str]:
    """The lower-cased words of ``text`` (of its scored sample when it is huge)."""
    return frozenset(word.lower() for word in _WORD.findall(scored_sample(text)))


def jaccard(first: frozenset[str], second: frozenset[str]) -> float:
    """Overlap of two word sets (1 for two empty sets)."""
    if not first and not second:
        return 1.0
    return len(first & second) / len(first | second)
