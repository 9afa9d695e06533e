"""Run an eval: does the panel beat its best member and its judge alone, and at what cost?

    python evals/run_eval.py --panel budget --dataset sample
    python evals/run_eval.py --panel budget --dataset gsm8k --limit 50 --out evals/results/gsm8k

The logic lives in ``fusion_engine.evals`` (tested, importable); ``fusion eval`` is the same.
"""

import sys

from fusion_engine.evals.cli import main

if __name__ == "__main__":
    sys.exit(main())
