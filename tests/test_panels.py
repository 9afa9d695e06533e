"""Panel files: the shipped ones load; every broken one is reported with its file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion_engine import load_panels
from fusion_engine.errors import ConfigFileError
from fusion_engine.judges import load_judge_templates

from .helpers import ROOT

TEMPLATES = {"default", "code_review"}
PROVIDERS = {"openrouter", "local"}

GOOD = """\
schema_version: 1
name: {name}
models:
  - slug: acme/alpha
  - slug: acme/beta
judge_model: acme/judge
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def load(folder: Path) -> dict[str, object]:
    return dict(load_panels(folder, judge_templates=TEMPLATES, providers=PROVIDERS))


def test_shipped_panels_load_with_the_seed_members() -> None:
    """The four seed panels load against the shipped templates with their members and judges."""
    templates = load_judge_templates(ROOT / "judges")
    panels = load_panels(ROOT / "panels", judge_templates=templates, providers=PROVIDERS)
    assert sorted(panels) == ["budget", "code", "quality", "self_fuse"]
    assert panels["budget"].judge_model == "qwen/qwen3.7-plus"
    assert panels["quality"].judge_template == "deep_research"
    assert panels["code"].judge_template == "code_review"
    assert [m.slug for m in panels["self_fuse"].models] == ["deepseek/deepseek-v4-pro"] * 2
    assert panels["self_fuse"].distinct_models == ["deepseek/deepseek-v4-pro"]
    cost = panels["quality"].estimated_cost_per_query
    assert cost is not None and (cost.min, cost.max) == (0.5, 1.0)


def test_example_panels_validate_but_are_not_loaded_by_default() -> None:
    """panels/examples/ is valid but not part of the default set."""
    templates = load_judge_templates(ROOT / "judges")
    examples = load_panels(ROOT / "panels/examples", judge_templates=templates, providers=PROVIDERS)
    assert "local" in examples
    assert all(m.provider == "local" for m in examples["local"].models)
    assert "local" not in load_panels(ROOT / "panels", judge_templates=templates)


def test_defaults_are_applied(tmp_path: Path) -> None:
    """Optional fields take the design's defaults."""
    write(tmp_path, "p", GOOD.format(name="p"))
    panel = load_panels(tmp_path)["p"]
    assert panel.member_timeout_s == 120
    assert panel.deadline_s is None
    assert panel.min_responses == 1
    assert panel.judge_template == "default"
    assert panel.judge_fallback_models == []
    assert panel.cache == "auto" and panel.web_search is False


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (GOOD.format(name="other"), "name", "must equal the file name"),
        (GOOD.format(name="p").replace("  - slug: acme/alpha\n  - slug: acme/beta\n", "  []\n")
         .replace("models:\n", "models:"), "models", "at least one model"),
        (GOOD.format(name="p") + "judge_template: nope\n", "judge_template", "unknown judge"),
        (GOOD.format(name="p").replace("slug: acme/beta", "slug: acme/beta\n    provider: mars"),
         "models[1].provider", "unknown provider"),
        (GOOD.format(name="p").replace("slug: acme/beta", "slug: acme/beta\n    temperature: hot"),
         "models[1].temperature", "Expected `float | null`"),
        (GOOD.format(name="p").replace("slug: acme/beta", "slug: acme/beta\n    temperature: 7"),
         "models[1].temperature", "between 0 and 2"),
        (GOOD.format(name="p") + "colour: blue\n", "colour", "unknown field"),
        (GOOD.format(name="p").replace("judge_model: acme/judge\n", ""), "judge_model", "missing"),
        (GOOD.format(name="p") + "min_responses: 3\n", "min_responses", "between 1 and"),
        (GOOD.format(name="p") + "member_timeout_s: 0\n", "member_timeout_s", "greater than 0"),
        (GOOD.format(name="p").replace("schema_version: 1", "schema_version: 2"),
         "schema_version", "unsupported version"),
        (GOOD.format(name="p").replace("- slug: acme/alpha", "- slug: ''"),
         "models[0].slug", "must name a model"),
        (GOOD.format(name="p") + "judge_provider: mars\n", "judge_provider", "unknown provider"),
        (GOOD.format(name="p") + "estimated_cost_per_query: {min: 2, max: 1}\n",
         "estimated_cost_per_query", "min <= max"),
    ],
)  # fmt: skip
def test_broken_panel_names_file_and_field(
    tmp_path: Path, text: str, field: str | None, problem: str | None
) -> None:
    """Each kind of mistake is reported with the file path and the offending field."""
    path = write(tmp_path, "p", text)
    with pytest.raises(ConfigFileError) as raised:
        load(tmp_path)
    error = raised.value
    assert error.path == str(path)
    assert str(path) in error.message
    assert error.field == field
    assert f"{path}: {field}:" in error.message
    assert problem in error.message


def test_invalid_yaml_is_reported_with_the_file(tmp_path: Path) -> None:
    """A YAML syntax error names the file."""
    path = write(tmp_path, "p", "name: [unclosed\nmodels: x\n")
    with pytest.raises(ConfigFileError) as raised:
        load(tmp_path)
    assert raised.value.message.startswith(f"{path}: invalid YAML")


def test_one_broken_file_is_never_skipped(tmp_path: Path) -> None:
    """A broken file among good ones fails the whole load instead of vanishing."""
    write(tmp_path, "good", GOOD.format(name="good"))
    write(tmp_path, "bad", GOOD.format(name="bad") + "deadline_s: soon\n")
    with pytest.raises(ConfigFileError) as raised:
        load(tmp_path)
    assert raised.value.field == "deadline_s"


def test_too_many_members(tmp_path: Path) -> None:
    """A panel over max_members is refused."""
    members = "".join(f"  - slug: m/{i}\n" for i in range(5))
    write(tmp_path, "p", f"name: p\nmodels:\n{members}judge_model: j\n")
    with pytest.raises(ConfigFileError) as raised:
        load_panels(tmp_path, max_members=4)
    assert raised.value.field == "models"


def test_missing_directory(tmp_path: Path) -> None:
    """A panels directory that does not exist is an error naming it."""
    with pytest.raises(ConfigFileError) as raised:
        load_panels(tmp_path / "absent")
    assert "absent" in raised.value.message


def test_member_may_repeat(tmp_path: Path) -> None:
    """The same slug twice is two independent members."""
    write(tmp_path, "p", "name: p\nmodels:\n  - slug: a/b\n  - slug: a/b\njudge_model: j\n")
    assert len(load_panels(tmp_path)["p"].models) == 2
