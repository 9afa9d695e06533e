"""Fix trailing whitespace and end-of-file newlines in text files (a pre-commit hook).

Stands in for pre-commit-hooks' ``trailing-whitespace`` and ``end-of-file-fixer``, whose
repository cannot be cloned on every machine. Like them it rewrites the files it fixes and exits
1 when it changed any, so ``make lint`` fails until the fixes are looked at (and committed).
Binary files (a NUL byte near the start) and empty files are left alone.

    python scripts/check_text_files.py FILE...           # fix, list what changed
    python scripts/check_text_files.py --check FILE...   # only report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def fixed(data: bytes) -> bytes:
    """``data`` without trailing blanks on any line, ending in exactly one newline."""
    if not data.strip():
        return b""  # empty, or only blanks: end-of-file-fixer empties it too
    crlf = b"\r\n" in data
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    text = b"\n".join(line.rstrip(b" \t") for line in lines).rstrip(b"\n") + b"\n"
    return text.replace(b"\n", b"\r\n") if crlf else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, do not rewrite")
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        good = fixed(data)
        if good == data:
            continue
        status = 1
        if args.check:
            print(f"{path}: trailing whitespace or missing/extra newline at the end")
        else:
            path.write_bytes(good)
            print(f"fixed {path}: trailing whitespace or newline at the end")
    return status


if __name__ == "__main__":
    sys.exit(main())
