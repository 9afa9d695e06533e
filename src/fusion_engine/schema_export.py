"""The JSON Schema of panel files, generated from the ``Panel`` struct.

``docs/panel.schema.json`` is this module's output, committed so editors can validate
``panels/*.yaml`` as you type; ``make schema`` rewrites it after a change to the structs, and
``tests/test_docs.py`` fails while the committed file differs from what the structs generate.

The schema covers what types can say (field names, types, defaults, required fields, no unknown
fields). Ranges and cross-references (a temperature between 0 and 2, a known judge template or
provider) are checked when the gateway loads the panel, with errors naming the file and field.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec

from .panels import Panel

#: Where ``make schema`` writes the schema, relative to the repository root.
SCHEMA_PATH = Path("docs/panel.schema.json")
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def panel_json_schema() -> dict[str, Any]:
    """The JSON Schema of a panel file (``panels/<name>.yaml``), generated from ``Panel``."""
    generated = msgspec.json.schema(Panel)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "Fusion Engine panel",
        "description": (
            "A panel file, panels/<name>.yaml: the models that answer, the judge that fuses their"
            " answers, and how long to wait. Generated from the Panel struct by"
            " `make schema`; ranges and references are checked when the gateway loads the file."
        ),
        **generated,
    }


def render(schema: dict[str, Any]) -> str:
    """The schema as the committed file holds it: indented JSON ending in a newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the panel schema (default ``docs/panel.schema.json``)."""
    parser = argparse.ArgumentParser(description="Write the JSON Schema of panel files.")
    parser.add_argument("output", nargs="?", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(panel_json_schema()), encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
