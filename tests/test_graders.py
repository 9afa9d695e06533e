"""Graders: answer extraction, normalisation and verdicts, in both directions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from fusion_engine.evals.graders import (
    GRADERS,
    GradeContext,
    GradeResult,
    UntrustedCodeWarning,
    build_program,
    grade,
)
from fusion_engine.evals.items import EvalItem


def item(grader: str, target: str, prompt: str = "Q?") -> EvalItem:
    return EvalItem(id="t1", prompt=prompt, target=target, grader=grader)


async def check(grader: str, answer: str, target: str, **kwargs: Any) -> GradeResult:
    return await grade(answer, item(grader, target, **kwargs))


# --- registry ----------------------------------------------------------------------------------


async def test_unknown_grader_names_the_known_ones() -> None:
    """An unknown grader is a ValueError listing every registered name."""
    with pytest.raises(ValueError, match="unknown grader 'nope'") as info:
        await grade("x", item("nope", "x"))
    for name in GRADERS:
        assert name in str(info.value)


def test_registry_is_read_only() -> None:
    """GRADERS cannot be mutated at run time."""
    with pytest.raises(TypeError):
        GRADERS["mine"] = GRADERS["contains"]  # type: ignore[index]


def test_registry_lists_every_grader() -> None:
    """All seven graders are registered under their item names."""
    assert set(GRADERS) == {
        "numeric",
        "math",
        "multiple_choice",
        "exact_match",
        "contains",
        "code_exec",
        "llm_judge",
    }


# --- numeric ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("The total is $1,234.50.", "1234.5"),
        ("so she pays 18 dollars.\n#### 18", "#### 18"),
        ("#### -3", "-3"),
        ("3 apples then 7", "7"),
        ("50%", "50"),
        ("It weighs 12 kg.", "12"),
        ("The answer is 0.50", ".5"),
        ("Answer: 72. That took 3 steps.", "72"),
        ("The answer is: **42**, checked 2 ways", "42"),
        ("Final: $\\boxed{1,000}$ and then 5 more words 9", "1000"),
        ("The final answer is \\boxed{\\frac{1}{2}}", "0.5"),
        ("It dropped to −5 degrees", "-5"),
        ("She lost -$20 overall", "-20"),
        ("Loss: $-20", "-20"),
        ("1,234,567 people", "1234567"),
        ("#### 7\nthough 3 would also be tempting", "7"),
        ("The answer is 3.0", "#### 3"),
        ("He had 10 - 4 = 6 left", "6"),
        ("She reads 100.0000001 pages", "100"),
        ("\\boxed{3}\n#### 5", "5"),
    ],
)
async def test_numeric_accepts(answer: str, target: str) -> None:
    """The final number is found despite commas, currency, units, signs and decimals."""
    result = await check("numeric", answer, target)
    assert result.correct, result


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("#### 18\nor maybe 72", "72"),
        ("The answer is 7 (not 72)", "72"),
        ("3 apples then 7", "3"),
        ("The total is 1,234", "1.234"),
        ("It is -3", "3"),
        ("No idea.", "5"),
        ("H2O has 3 atoms", "2"),
        ("The answer is 100.01", "100"),
        ("\\boxed{12} but 13 at the end", "13"),
    ],
)
async def test_numeric_rejects(answer: str, target: str) -> None:
    """A different, misplaced or missing final number fails."""
    assert not (await check("numeric", answer, target)).correct


async def test_numeric_reports_what_it_read() -> None:
    """`extracted` is the cleaned number the grader compared."""
    result = await check("numeric", "It costs $1,234.50.", "1234.5")
    assert result.extracted == "1234.50"


async def test_numeric_target_without_number_fails_with_detail() -> None:
    """A bad target is a failed grade that says so, not a crash."""
    result = await check("numeric", "5", "five")
    assert not result.correct and result.detail and "no number" in result.detail


# --- math ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("So $\\boxed{\\frac{1}{2}}$.", "0.5"),
        ("\\boxed{\\sqrt{2}}", "\\sqrt{2}"),
        ("\\boxed{\\sqrt2}", "\\sqrt{2}"),
        ("\\boxed{\\dfrac12}", "\\frac{1}{2}"),
        ("\\boxed{\\tfrac{3}{4}}", "0.75"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{1/2}", "\\frac12"),
        ("first \\boxed{2}, finally \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
        ("\\boxed{90^\\circ}", "90"),
        ("\\boxed{5\\text{ cm}}", "5"),
        ("\\boxed{\\text{Monday}}", "\\text{Monday}"),
        ("\\boxed{10,\\!000}", "10000"),
        ("\\boxed{50\\%}", "50"),
        ("\\fbox{-\\frac{2}{4}}", "-0.5"),
        ("\\boxed{.5}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}"),
        ("The answer is $\\frac{1}{3}$.", "\\frac{1}{3}"),
        ("$x^2+1$", "x^2+1"),
        ("\\boxed 7$", "7"),
        ("\\boxed{3}", "The area is therefore $\\boxed{3}$."),
    ],
)
async def test_math_accepts(answer: str, target: str) -> None:
    """Equivalent LaTeX answers match after normalisation or exact evaluation."""
    result = await check("math", answer, target)
    assert result.correct, result


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("\\boxed{\\frac{1}{3}}", "0.33"),
        ("\\boxed{\\sqrt{3}}", "\\sqrt{2}"),
        ("\\boxed{2} is wrong, so \\boxed{3}", "2"),
        ("\\boxed{x^2}", "x^3"),
        ("\\boxed{\\frac{1}{2", "\\frac{1}{2}"),
        ("", "1"),
        ("\\boxed{(3,4)}", "(4,3)"),
        ("\\boxed{-5}", "5"),
    ],
)
async def test_math_rejects(answer: str, target: str) -> None:
    """Different values, the wrong box or a cut-off box fail."""
    assert not (await check("math", answer, target)).correct


async def test_math_extracts_nested_box() -> None:
    """The last box is read with its nested braces intact."""
    result = await check("math", "\\boxed{\\frac{\\sqrt{2}}{2}} done", "\\frac{\\sqrt2}2")
    assert result.correct and result.extracted == "\\frac{\\sqrt{2}}{2}"


# --- multiple choice ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("I think (B) is wrong; the answer is D.", "D"),
        ("The answer is (C)", "C"),
        ("Answer: C", "C"),
        ("**Answer:** c", "C"),
        ("After thinking it over: **C**", "C"),
        ("C) 42 is right", "C"),
        ("It must be (c).", "C"),
        ("Considering everything,\nB\n", "B"),
        ("I would go with option J", "J"),
        ("The correct answer is probably E because of X.", "E"),
        ("The answer is option G", "G"),
        ("Answer: I think it is F", "F"),
        ("(A) fails, (B) fails. So the answer is A, not B.", "A"),
        ("A lot of options here, but B", "B"),
        ("Final answer: [H]", "H"),
        ("the answer is a.", "A"),
        ("  (D)  ", "d"),
        ("answer: b", "(B)"),
    ],
)
async def test_multiple_choice_accepts(answer: str, target: str) -> None:
    """The chosen letter is found, preferring explicit answer statements."""
    result = await check("multiple_choice", answer, target)
    assert result.correct, result


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("I think (B) is wrong; the answer is D.", "B"),
        ("The answer is a bit unclear but (C)", "A"),
        ("DNA and CAB are words", "D"),
        ("I have no idea.", "I"),
        ("No letter here", "A"),
        ("Answer: K", "K"),
        ("The answer is C", "not a letter"),
    ],
)
async def test_multiple_choice_rejects(answer: str, target: str) -> None:
    """Stray letters, letters in words, articles and pronouns are not choices."""
    assert not (await check("multiple_choice", answer, target)).correct


# --- exact match and contains -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "target", "correct"),
    [
        ("  Paris. ", "paris", True),
        ('"New   York"', "new york", True),
        ("**Blue**", "blue", True),
        ("“yes”", "Yes", True),
        ("-5", "5", False),
        ("50%", "50", False),
        ("Paris, France", "Paris", False),
        ("", "x", False),
    ],
)
async def test_exact_match(answer: str, target: str, correct: bool) -> None:
    """Case, spacing and surrounding punctuation are ignored; signs and inner text are not."""
    assert (await check("exact_match", answer, target)).correct is correct


@pytest.mark.parametrize(
    ("answer", "target", "correct"),
    [
        ("The capital is PARIS.", "paris", True),
        ("It is New\nYork city", "new york", True),
        ("Yes, definitely", "yes|y", True),
        ("It was George Washington.", "Lincoln | Washington", True),
        ("It was Adams.", "Lincoln|Washington", False),
        ("anything", "", False),
        ("anything", " | ", False),
    ],
)
async def test_contains(answer: str, target: str, correct: bool) -> None:
    """Any `|`-separated target, case-insensitively, anywhere in the answer."""
    assert (await check("contains", answer, target)).correct is correct


async def test_contains_reports_the_matching_option() -> None:
    """`extracted` names which acceptable answer was found."""
    result = await check("contains", "George Washington", "Lincoln | Washington")
    assert result.extracted == "Washington"


# --- code_exec ----------------------------------------------------------------------------------

PROMPT = '''from typing import List


def _double(x: int) -> int:
    return 2 * x


def add_all(numbers: List[int]) -> int:
    """Sum the numbers."""
'''
TESTS = """def check(candidate):
    assert candidate([1, 2, 3]) == 6
    assert candidate([]) == 0

check(add_all)
"""
FAST = GradeContext(code_timeout_s=5.0, code_memory_mb=256)
untrusted = pytest.mark.filterwarnings("ignore::fusion_engine.evals.graders.UntrustedCodeWarning")


async def run_code(answer: str, context: GradeContext = FAST) -> GradeResult:
    return await grade(answer, item("code_exec", TESTS, prompt=PROMPT), context)


@untrusted
@pytest.mark.parametrize(
    "answer",
    [
        "def add_all(numbers):\n    return sum(numbers)\n",
        "    return sum(numbers)\n",
        "return sum(numbers)",
        "Here you go:\n```python\ndef add_all(numbers: List[int]) -> int:\n    return sum(numbers)\n```\nThis sums them.",
        "```\ndef add_all(numbers):\n    return sum(_double(n) for n in numbers) // 2\n```",
        "```py\n    total = 0\n    for n in numbers:\n        total += n\n    return total\n```",
        "Draft:\n```python\ndef add_all(n): return 0\n```\nFixed:\n```python\ndef add_all(n):\n    return sum(n)\n```",
        "```python\ndef add_all(numbers):\n    return sum(numbers)\n",
    ],
    ids=[
        "full",
        "body",
        "unindented-body",
        "fenced-prose",
        "plain-fence-helper",
        "fenced-body",
        "last-block",
        "unclosed-fence",
    ],
)
async def test_code_exec_passes(answer: str) -> None:
    """Correct solutions pass: whole functions, bodies (prompt prepended), fenced blocks."""
    result = await run_code(answer)
    assert result.correct, result.detail


@untrusted
async def test_code_exec_wrong_answer_fails_with_the_assertion() -> None:
    """A wrong solution fails and the detail carries the traceback."""
    result = await run_code("def add_all(numbers):\n    return 1\n")
    assert not result.correct
    assert result.detail and "exit code 1" in result.detail and "AssertionError" in result.detail


@untrusted
async def test_code_exec_syntax_error_fails() -> None:
    """Prose with no code is not a passing program."""
    assert not (await run_code("I cannot solve this.")).correct


@untrusted
async def test_code_exec_infinite_loop_is_killed() -> None:
    """An infinite loop is killed at the wall-clock timeout."""
    started = time.monotonic()
    result = await run_code("    while True:\n        pass\n", GradeContext(code_timeout_s=1))
    assert not result.correct and result.detail and "timed out" in result.detail
    assert time.monotonic() - started < 4


def read_pid(pid_file: Path) -> int | None:
    text = pid_file.read_text() if pid_file.exists() else ""
    return int(text) if text.strip() else None


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its reaper."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"


async def wait_for_pid(pid_file: Path) -> int:
    """The pid a program wrote to ``pid_file``, once it has."""
    for _ in range(250):
        if (pid := read_pid(pid_file)) is not None:
            return pid
        await asyncio.sleep(0.02)
    raise AssertionError("the program never wrote its pid")


async def is_gone(pid: int) -> bool:
    """Within 2 s, the process has exited."""
    for _ in range(100):
        if not is_running(pid):
            return True
        await asyncio.sleep(0.02)
    return False


@untrusted
async def test_code_exec_leftover_child_is_killed(tmp_path: Path) -> None:
    """A background child of a finished program is killed and does not hold up the grade."""
    pid_file = tmp_path / "pid"
    answer = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "def add_all(numbers):\n    return sum(numbers)\n"
    )
    started = time.monotonic()
    result = await run_code(answer, GradeContext(code_timeout_s=5))
    assert result.correct, result.detail
    assert time.monotonic() - started < 4
    assert await is_gone(await wait_for_pid(pid_file))


@untrusted
async def test_code_exec_memory_bomb_fails() -> None:
    """Allocating past the memory limit fails the program."""
    answer = "def add_all(numbers):\n    blob = bytearray(1 << 30)\n    return sum(numbers)\n"
    result = await run_code(answer)
    assert not result.correct and result.detail and "MemoryError" in result.detail


@untrusted
async def test_code_exec_runs_isolated_in_a_temp_dir() -> None:
    """The program runs in an empty temporary cwd with a minimal environment and no stdin."""
    answer = (
        "import os, sys\n"
        "assert os.listdir('.') == ['program.py'], os.listdir('.')\n"
        "assert not any('proxy' in k.lower() for k in os.environ), os.environ\n"
        "assert sys.stdin is None or sys.stdin.read() == ''\n"
        "assert sys.flags.isolated\n"
        "def add_all(numbers):\n    return sum(numbers)\n"
    )
    result = await run_code(answer)
    assert result.correct, result.detail


@untrusted
async def test_code_exec_truncates_output() -> None:
    """A flood of output is cut to its tail, which holds the traceback."""
    answer = "print('x' * 10_000_000)\ndef add_all(numbers):\n    return 0\n"
    result = await run_code(answer)
    assert result.detail and len(result.detail) < 5000 and "AssertionError" in result.detail


@untrusted
async def test_code_exec_endless_output_is_stopped() -> None:
    """An endless print loop hits the output file limit long before the timeout."""
    started = time.monotonic()
    result = await run_code("while True:\n    print('x' * 4096)\n")
    assert not result.correct and time.monotonic() - started < 4


@untrusted
async def test_code_exec_cancelled_grade_kills_the_program(tmp_path: Path) -> None:
    """Cancelling a grade kills the running program instead of leaving it behind."""
    pid_file = tmp_path / "pid"
    answer = f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\nwhile True: pass\n"
    task = asyncio.create_task(run_code(answer, GradeContext(code_timeout_s=30)))
    pid = await wait_for_pid(pid_file)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await is_gone(pid)


async def test_code_exec_warns_that_code_is_untrusted() -> None:
    """Running model code warns that it belongs in a container."""
    with pytest.warns(UntrustedCodeWarning, match="container"):
        await run_code("def add_all(numbers):\n    return sum(numbers)\n")


def test_build_program_order() -> None:
    """Prompt (imports, helpers) first, then the answer's function, then the tests."""
    program = build_program(
        "```python\ndef add_all(n):\n    return sum(n)\n```",
        item("code_exec", TESTS, prompt=PROMPT),
    )
    assert program.index("from typing import List") < program.index("def add_all(n)")
    assert program.index("def add_all(n)") < program.index("check(add_all)")


# --- llm_judge ----------------------------------------------------------------------------------


class FakeJudge:
    """Records the messages it was asked and replies with a canned text."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.calls: list[list[dict[str, Any]]] = []

    async def __call__(self, messages: list[dict[str, Any]]) -> str:
        self.calls.append(messages)
        return self.reply


async def judge(reply: str, answer: str = "Paris") -> tuple[GradeResult, FakeJudge]:
    fake = FakeJudge(reply)
    question = EvalItem(id="j", prompt="Capital of France?", target="Paris", grader="llm_judge")
    return await grade(answer, question, GradeContext(ask_model=fake)), fake


@pytest.mark.parametrize(
    ("reply", "correct"),
    [
        ("Matches the reference.\nVERDICT: CORRECT", True),
        ("Wrong city.\nVERDICT: INCORRECT", False),
        ("ok\nverdict: correct", True),
        ("**VERDICT:** INCORRECT", False),
        ("At first VERDICT: INCORRECT, but on reflection\nVERDICT: CORRECT", True),
        ("VERDICT: CORRECT\n\nActually no.\nVERDICT: INCORRECT\n", False),
        ("Verdict - Correct.", True),
    ],
)
async def test_llm_judge_parses_last_verdict(reply: str, correct: bool) -> None:
    """The last VERDICT line decides, in any case and with markdown around it."""
    result, _ = await judge(reply)
    assert result.correct is correct


async def test_llm_judge_unparseable_reply_fails_with_detail() -> None:
    """A reply without a verdict is incorrect and says why."""
    result, _ = await judge("I think it is probably right.")
    assert not result.correct and result.detail and "unparseable" in result.detail


async def test_llm_judge_sends_question_reference_and_answer() -> None:
    """The judge sees a neutral rubric and the question, reference and candidate."""
    result, fake = await judge("Same city.\nVERDICT: CORRECT", answer="It is Paris.")
    (messages,) = fake.calls
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "VERDICT: CORRECT" in messages[0]["content"]
    user = messages[1]["content"]
    assert "Capital of France?" in user and "<reference>\nParis" in user and "It is Paris." in user
    assert result.extracted == "CORRECT" and result.detail == "Same city."


async def test_llm_judge_needs_ask_model() -> None:
    """Without an ask_model the judge grader is a ValueError."""
    with pytest.raises(ValueError, match="ask_model"):
        await grade("Paris", item("llm_judge", "Paris"))
