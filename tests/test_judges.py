"""Judge templates and the judge's messages (pure functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusion_engine.errors import ConfigFileError
from fusion_engine.judges import (
    TRUNCATION_MARK,
    USER_INSTRUCTIONS_HEADING,
    build_judge_messages,
    load_judge_templates,
    trim_to_budget,
)
from fusion_engine.protocol import FunctionCall, ToolCall
from fusion_engine.results import PanelResponse

from .helpers import ROOT


def answer(index: int, content: str | None = None, **fields: object) -> PanelResponse:
    return PanelResponse(index=index, model=f"secret-model-{index}", content=content, **fields)  # type: ignore[arg-type]


def test_the_five_templates_ship() -> None:
    """The five judge templates ship, each with real content."""
    templates = load_judge_templates(ROOT / "judges")
    assert set(templates) >= {
        "default",
        "deep_research",
        "code_review",
        "creative",
        "tool_synthesis",
    }
    assert all(len(text.split()) > 150 for text in templates.values())


def test_empty_template_is_an_error(tmp_path: Path) -> None:
    """An empty template file is reported by path."""
    (tmp_path / "blank.md").write_text("  \n")
    with pytest.raises(ConfigFileError) as raised:
        load_judge_templates(tmp_path)
    assert str(tmp_path / "blank.md") in raised.value.message


def test_messages_are_template_conversation_then_answers() -> None:
    """System template first, the conversation as it came, then one user message with answers."""
    conversation = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"},
    ]
    messages = build_judge_messages(
        "TEMPLATE", conversation, [answer(0, "4"), answer(1, "four")], boundary="B"
    )
    assert messages[0] == {"role": "system", "content": "TEMPLATE"}
    assert messages[1:4] == conversation
    closing = messages[4]
    assert closing["role"] == "user"
    assert "### Answer 1 [B]\n\n4\n\n### End of answer 1 [B]" in closing["content"]
    assert "### Answer 2 [B]\n\nfour\n\n### End of answer 2 [B]" in closing["content"]
    assert "secret-model" not in json.dumps(messages)


def test_client_system_prompt_is_folded_into_the_system_message() -> None:
    """System and developer messages become a section of the judge's system message."""
    conversation = [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
        {"role": "user", "content": "q"},
    ]
    messages = build_judge_messages("T", conversation, [answer(0, "a")])
    system = messages[0]["content"]
    assert system.startswith("T\n\n" + USER_INSTRUCTIONS_HEADING)
    assert "Be terse." in system and "Use French." in system
    assert [m["role"] for m in messages] == ["system", "user", "user"]


def test_answers_are_in_panel_order_regardless_of_arrival() -> None:
    """Answers are numbered by panel position, not by who finished first."""
    messages = build_judge_messages(
        "T", [{"role": "user", "content": "q"}], [answer(2, "C"), answer(0, "A")]
    )
    closing = messages[-1]["content"]
    assert closing.index("A") < closing.index("C")


def test_shuffle_is_deterministic_for_the_same_conversation() -> None:
    """With shuffle, the same conversation always gives the same order."""
    answers = [answer(i, f"answer-{i}") for i in range(6)]
    convo = [{"role": "user", "content": "q"}]
    first = build_judge_messages("T", convo, answers, shuffle=True, boundary="B")[-1]["content"]
    again = build_judge_messages("T", convo, answers, shuffle=True, boundary="B")[-1]["content"]
    plain = build_judge_messages("T", convo, answers, boundary="B")[-1]["content"]
    assert first == again
    assert first != plain  # 6 answers: the seeded order differs from panel order


def test_tool_proposals_are_rendered_as_json() -> None:
    """Proposed tool calls reach the judge as JSON; invalid arguments are shown, not dropped."""
    calls = [
        ToolCall(id="c1", function=FunctionCall(name="lookup", arguments='{"q": "x"}')),
        ToolCall(id="c2", function=FunctionCall(name="lookup", arguments="{broken")),
    ]
    messages = build_judge_messages(
        "T", [{"role": "user", "content": "q"}], [answer(0, tool_calls=calls)], with_tools=True
    )
    closing = messages[-1]["content"]
    assert '"name": "lookup"' in closing
    assert '"q": "x"' in closing
    assert "invalid_json_arguments" in closing
    assert "tool call(s) natively" in closing


def test_long_answers_are_trimmed_to_the_input_budget() -> None:
    """With judge_max_input_tokens, long answers are cut and marked; short ones are kept."""
    answers = [answer(0, "short answer"), answer(1, "word " * 5000)]
    messages = build_judge_messages(
        "T", [{"role": "user", "content": "q"}], answers, max_input_tokens=1000
    )
    closing = messages[-1]["content"]
    assert "short answer" in closing
    assert TRUNCATION_MARK.strip() in closing
    assert len(closing) < 1000 * 4


def test_trim_to_budget_gives_unused_share_to_long_answers() -> None:
    """Water-filling: a short answer keeps all of its text; long ones share what is left."""
    texts = ["a" * 100, "b" * 5000, "c" * 5000]
    trimmed = trim_to_budget(texts, 1000)  # 3500 characters in all
    assert trimmed[0] == texts[0]
    assert abs(len(trimmed[1]) - len(trimmed[2])) <= 1
    assert sum(len(t) for t in trimmed) <= 3500
    assert trim_to_budget(["x", "y"], 1000) == ["x", "y"]
