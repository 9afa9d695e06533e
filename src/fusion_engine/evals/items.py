"""Eval items: one JSON object per line, ``{"id", "prompt", "target", "grader", "category"}``."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import msgspec

from ..errors import ConfigFileError


class EvalItem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One question with its expected answer and the grader that checks it.

    For ``code_exec`` the ``target`` is the test code (HumanEval's ``check`` function and a call
    to it); for ``llm_judge`` it is the reference answer or rubric.
    """

    id: str
    prompt: str
    target: str
    grader: str
    category: str = ""


_decode_item = msgspec.json.Decoder(EvalItem).decode
_encode = msgspec.json.Encoder().encode


def read_items(path: Path) -> list[EvalItem]:
    """Read a JSONL dataset.

    Raises:
        ConfigFileError: a line is not a valid item (the message names the file and line).
    """
    items: list[EvalItem] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = _decode_item(line)
        except msgspec.DecodeError as exc:
            raise ConfigFileError(str(path), f"line {number}", str(exc)) from exc
        if item.id in seen:
            raise ConfigFileError(str(path), f"line {number}", f"duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return items


def write_items(path: Path, items: Iterable[EvalItem]) -> int:
    """Write items as JSONL; returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("wb") as handle:
        for item in items:
            handle.write(_encode(item) + b"\n")
            count += 1
    return count


def sample(items: list[EvalItem], limit: int | None, seed: int) -> list[EvalItem]:
    """A seeded random sample of ``limit`` items in their original order (all when no limit)."""
    if limit is None or limit >= len(items):
        return list(items)
    chosen = set(random.Random(seed).sample(range(len(items)), limit))
    return [item for position, item in enumerate(items) if position in chosen]
