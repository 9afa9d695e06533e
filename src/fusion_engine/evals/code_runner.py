"""Running model-written code for the ``code_exec`` grader: build the program, run it limited.

The program runs with ``python -I`` in a fresh temporary directory, with a wall-clock timeout
(the whole process group is killed), address-space, CPU, core and file-size limits, stdin
closed and a minimal environment. That is not a sandbox: it reads the file system and may open
network connections. Run evals that use it inside a container without network access.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import tempfile
import textwrap
from contextlib import suppress
from functools import partial
from pathlib import Path

from .items import EvalItem

if sys.platform != "win32":
    import resource


class UntrustedCodeWarning(UserWarning):
    """``code_exec`` is running model-written code outside a container."""


_FENCE_RE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_FENCES = {"", "python", "py", "python3", "py3"}
_OUTPUT_LIMIT = 4000  # bytes of output kept; the end, where the traceback is
_OUTPUT_FILE_LIMIT = 16 * 1024 * 1024  # RLIMIT_FSIZE: a print loop dies, not the disk
UNTRUSTED = (
    "code_exec runs untrusted model-written code with only a timeout, a memory limit and a "
    "minimal environment; run evals that use it inside a container without network access"
)


def extract_code(answer: str) -> str:
    """The last ```python (or plain) fenced block, else the whole answer."""
    blocks = [body for lang, body in _FENCE_RE.findall(answer) if lang.lower() in _PYTHON_FENCES]
    return blocks[-1] if blocks else answer


def _entry_point(prompt: str) -> str | None:
    """The function the prompt asks for: its last top-level ``def``."""
    names = re.findall(r"^(?:async\s+)?def\s+(\w+)\s*\(", prompt, re.MULTILINE)
    return names[-1] if names else None


def _is_python(source: str) -> bool:
    try:
        compile(source, "<prompt>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def build_program(answer: str, item: EvalItem) -> str:
    """The program ``code_exec`` runs: the answer's code, with the prompt if needed, then tests."""
    code = extract_code(answer)
    name = _entry_point(item.prompt)
    prompt = item.prompt if item.prompt.endswith("\n") else item.prompt + "\n"
    if name is not None and not _defines(code, name):
        # A completion: the function body. Markdown often loses its indentation.
        first = next((line for line in code.splitlines() if line.strip()), "")
        body = textwrap.indent(code, "    ") if first == first.lstrip() else code
        code = prompt + body
    elif name is not None and _is_python(item.prompt):
        # A whole function: keep the prompt's imports and helpers; the answer's def wins.
        code = prompt + "\n" + code
    return code + "\n\n" + item.target + "\n"


def _limit_child(memory_bytes: int, cpu_seconds: int) -> None:
    """In the child before exec: own process group (to kill it whole), resource limits."""
    os.setsid()
    for limit, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, _OUTPUT_FILE_LIMIT),
    ):
        with suppress(ValueError, OSError):  # best effort: a platform may refuse one
            resource.setrlimit(limit, (value, value))


def _kill_group(pid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _prepare(directory: Path, program: str) -> int:
    """Write ``work/program.py``; return a descriptor for the output file beside ``work``."""
    (directory / "work").mkdir()
    (directory / "work" / "program.py").write_text(program, encoding="utf-8")
    return os.open(directory / "output", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _output_tail(directory: Path) -> str:
    """The end of the program's output, where a traceback is."""
    with (directory / "output").open("rb") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - _OUTPUT_LIMIT))
        return handle.read().decode("utf-8", "replace")


async def _run_python(
    directory: Path, program: str, timeout_s: float, memory_mb: int
) -> int | None:
    """Run ``program`` in ``directory/work``; its exit code, or None if it timed out."""
    work = str(directory / "work")
    # Output goes to a file, not a pipe: on 3.11 ``wait()`` also waits for every pipe to close,
    # which a child the program left behind would hold open; a file size limit bounds it.
    output = _prepare(directory, program)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "program.py",
            cwd=work,
            env={"PATH": os.defpath, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=partial(_limit_child, memory_mb * 1024 * 1024, int(timeout_s) + 1),
        )
    finally:
        os.close(output)
    try:
        returncode: int | None = await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        returncode = None
    finally:
        _kill_group(process.pid)  # on timeout or cancellation, and children left behind
    await process.wait()
    return returncode


async def run_program(program: str, *, timeout_s: float, memory_mb: int) -> tuple[int | None, str]:
    """Run ``program``: its exit code (``None`` if it timed out) and the end of its output."""
    with tempfile.TemporaryDirectory(prefix="fusion-code-", ignore_cleanup_errors=True) as name:
        directory = Path(name)
        returncode = await _run_python(directory, program, timeout_s, memory_mb)
        return returncode, _output_tail(directory)
