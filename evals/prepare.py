"""Fetch a benchmark and write it as eval items: ``python evals/prepare.py gsm8k --limit 50``."""

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path; there, evals/datasets/ would be imported as
# an empty namespace package when the Hugging Face `datasets` library is not installed.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

from fusion_engine.evals.prepare_cli import main  # noqa: E402  (after the sys.path fix)

if __name__ == "__main__":
    sys.exit(main())
