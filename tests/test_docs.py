"""The documentation cannot drift from the code: configuration reference, panel schema, metric
and log names, CI and pre-commit set-up, and every command the docs print."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import jsonschema
import msgspec
import pytest
import yaml

from fusion_engine.config import (
    GatewayConfig,
    LimitsSpec,
    PassthroughSpec,
    ProviderSpec,
    RateLimitSpec,
)
from fusion_engine.panels import EstimatedCost, Panel, PanelMember
from fusion_engine.schema_export import SCHEMA_PATH, main, panel_json_schema, render

from .helpers import ROOT, load_script, server_routes

DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
SCHEMA_FILE = ROOT / SCHEMA_PATH
SHIPPED_PANELS = sorted([*ROOT.glob("panels/*.yaml"), *ROOT.glob("panels/examples/*.yaml")])
#: Struct -> the heading of its table in docs/configuration.md (the heading names the struct).
DOCUMENTED_STRUCTS: list[type[msgspec.Struct]] = [
    GatewayConfig,
    ProviderSpec,
    PassthroughSpec,
    LimitsSpec,
    RateLimitSpec,
    Panel,
    PanelMember,
    EstimatedCost,
]


# --- markdown helpers ---------------------------------------------------------------------------


def section(markdown: str, heading: str) -> str:
    """The text under the first heading containing ``heading``, up to the next heading (lines
    inside fenced code blocks are never headings)."""
    lines, fenced, start = markdown.splitlines(), False, None
    for number, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#+ ", line):
            if start is not None:
                return "\n".join(lines[start:number])
            if heading in line:
                start = number + 1
    assert start is not None, f"no heading containing {heading!r}"
    return "\n".join(lines[start:])


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``text``, as lists of cell texts."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, "no table with rows"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def code_names(cell: str) -> list[str]:
    """The `backticked` names of a table cell."""
    return re.findall(r"`([^`]+)`", cell)


# --- the panel JSON Schema ----------------------------------------------------------------------


def test_committed_schema_is_what_the_structs_generate() -> None:
    """docs/panel.schema.json is current: run `make schema` after changing the panel structs."""
    assert SCHEMA_FILE.read_text() == render(panel_json_schema()), "stale: run `make schema`"


def test_schema_is_a_valid_json_schema_from_the_panel_struct() -> None:
    """The schema is valid 2020-12 and describes the Panel struct's fields."""
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] and schema["description"]
    panel = schema["$defs"]["Panel"]
    assert set(panel["properties"]) == set(Panel.__struct_fields__)
    assert panel["additionalProperties"] is False


def test_make_schema_writes_the_committed_file(tmp_path: Path) -> None:
    """`make schema` (schema_export.main) writes exactly the committed bytes."""
    target = tmp_path / "docs" / "panel.schema.json"
    assert main([str(target)]) == 0
    assert target.read_bytes() == SCHEMA_FILE.read_bytes()


@pytest.mark.parametrize("path", SHIPPED_PANELS, ids=lambda path: str(path.relative_to(ROOT)))
def test_shipped_panels_validate_against_the_schema(path: Path) -> None:
    """Every shipped panel, examples included, is valid for an editor using the schema."""
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_shipped_panels_are_found() -> None:
    """The parametrised check above is not vacuous."""
    names = {path.stem for path in SHIPPED_PANELS}
    assert {"budget", "quality", "code", "self_fuse", "local"} <= names


BUDGET = {
    "schema_version": 1,
    "name": "budget",
    "models": [{"slug": "a/x"}, {"slug": "b/y", "temperature": 0.7}],
    "judge_model": "j/z",
}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"judge_modle": "j/z"}, id="misspelt field"),
        pytest.param({"models": [{"slug": "a/x", "temprature": 0.7}]}, id="misspelt member field"),
        pytest.param({"models": [{"slug": "a/x", "temperature": "hot"}]}, id="string for number"),
        pytest.param({"models": "a/x"}, id="models not a list"),
        pytest.param({"models": [{"max_tokens": 10}]}, id="member without slug"),
        pytest.param({"judge_model": None}, id="judge_model null"),
        pytest.param({"estimated_cost_per_query": {"max": 0.1}}, id="cost range without min"),
        pytest.param({"deadline_s": "soon"}, id="deadline not a number"),
        pytest.param({"cache": "yes"}, id="string for boolean"),
    ],
)
def test_broken_panels_do_not_validate(change: dict[str, Any]) -> None:
    """The schema catches what the struct rejects (the valid base panel passes)."""
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(BUDGET, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**BUDGET, **change}, schema)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**BUDGET, **change}, Panel, strict=True)


def test_a_panel_without_judge_model_does_not_validate() -> None:
    """A required field left out fails validation."""
    schema = json.loads(SCHEMA_FILE.read_text())
    broken = {key: value for key, value in BUDGET.items() if key != "judge_model"}
    with pytest.raises(jsonschema.ValidationError, match="judge_model"):
        jsonschema.validate(broken, schema)


# --- the configuration reference: environment variables ----------------------------------------

_READS = [
    r"""(?:env|environ|os)\.(?:get|getenv)\(\s*["']([A-Z][A-Z0-9_]+)["']""",  # env.get("X")
    r"""environ\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\]""",  # os.environ["X"]
    r"""_\w+\(\s*env,\s*["']([A-Z][A-Z0-9_]+)["']""",  # _int(env, "X", ...)
    r"""\w+_env\s*=\s*["']([A-Z][A-Z0-9_]+)["']""",  # api_key_env="X" (built-in providers)
    r"""["']([A-Z][A-Z0-9_]+)["']\s+in\s+[\w.]*environ""",  # "X" in settings.environ
]


def variables_read_by_code() -> set[str]:
    """Every environment variable src/ reads, and those the shipped gateway config names."""
    names = {
        name
        for path in (ROOT / "src").rglob("*.py")
        for pattern in _READS
        for name in re.findall(pattern, path.read_text())
    }
    gateway = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    for provider in gateway["providers"].values():
        names.update(value for key, value in provider.items() if key.endswith("_env") and value)
    return names


def documented_variables() -> set[str]:
    rows = table_rows(section(CONFIGURATION, "Environment variables"))
    return {name for row in rows for name in code_names(row[0])}


def test_the_variable_scan_finds_the_settings() -> None:
    """The scan finds what settings.py reads (so the comparison below is not vacuous)."""
    found = variables_read_by_code()
    source = (ROOT / "src/fusion_engine/settings.py").read_text()
    assert set(re.findall(r"""\(env,\s*"([A-Z0-9_]+)\"""", source)) <= found
    assert {"OPENROUTER_API_KEY", "FUSION_SERVER_API_KEYS", "REDIS_URL", "FUSION_CACHE"} <= found
    assert len(found) >= 20


def test_every_variable_the_code_reads_is_documented() -> None:
    """docs/configuration.md lists every variable the code reads."""
    missing = variables_read_by_code() - documented_variables()
    assert not missing, f"add to docs/configuration.md: {sorted(missing)}"


def test_every_documented_variable_is_read_by_the_code() -> None:
    """docs/configuration.md lists no variable the code ignores."""
    unknown = documented_variables() - variables_read_by_code()
    assert not unknown, f"documented but never read: {sorted(unknown)}"


def test_every_variable_has_a_meaning_and_a_default() -> None:
    for row in table_rows(section(CONFIGURATION, "Environment variables")):
        assert len(row) == 3 and all(row), row


# --- the configuration reference: config and panel fields --------------------------------------


def type_name(annotation: Any) -> str:
    """How the reference writes a field's type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in args)
    if origin is Literal:
        return " or ".join(str(arg) for arg in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return "mapping" if args[1] is Any else f"map of string to {type_name(args[1])}"
    simple = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
    if annotation in simple:
        return simple[annotation]
    assert isinstance(annotation, type) and issubclass(annotation, msgspec.Struct), annotation
    return annotation.__name__


def field_rows(struct: type[msgspec.Struct]) -> dict[str, list[str]]:
    """The struct's table in docs/configuration.md, by field name."""
    rows = table_rows(section(CONFIGURATION, f"(`{struct.__name__}`)"))
    by_name = {}
    for row in rows:
        names = code_names(row[0])
        assert len(names) == 1, f"one field per row: {row[0]}"
        by_name[names[0]] = row
    return by_name


@pytest.mark.parametrize("struct", DOCUMENTED_STRUCTS, ids=lambda struct: struct.__name__)
def test_every_field_is_documented_and_nothing_else(struct: type[msgspec.Struct]) -> None:
    """The struct's table lists exactly its fields."""
    documented = set(field_rows(struct))
    fields = set(struct.__struct_fields__)
    assert not fields - documented, f"add to docs/configuration.md: {sorted(fields - documented)}"
    assert not documented - fields, f"no such field in {struct.__name__}: {documented - fields}"


@pytest.mark.parametrize("struct", DOCUMENTED_STRUCTS, ids=lambda struct: struct.__name__)
def test_documented_types_and_defaults_match_the_struct(struct: type[msgspec.Struct]) -> None:
    """Each row's type and default are the struct's (``required`` when there is no default)."""
    rows = field_rows(struct)
    for field in msgspec.structs.fields(struct):
        row = rows[field.name]
        assert row[1].replace("`", "") == type_name(field.type), (field.name, row[1])
        if field.required:
            assert row[2] == "required", (field.name, row[2])
            continue
        written = code_names(row[2])
        assert written, f"{field.name}: the default is not written as `value`"
        default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
        value = msgspec.convert(yaml.safe_load(written[0]), field.type)
        assert value == default, (field.name, written[0], default)


@pytest.mark.parametrize("struct", [Panel, PanelMember, EstimatedCost], ids=lambda s: s.__name__)
def test_every_panel_field_has_a_valid_example(struct: type[msgspec.Struct]) -> None:
    """The example column of the panel tables holds a value of the field's type."""
    for field in msgspec.structs.fields(struct):
        example = code_names(field_rows(struct)[field.name][3])
        assert example, f"{field.name}: no example"
        msgspec.convert(yaml.safe_load(example[0]), field.type)


def test_the_shipped_gateway_config_in_the_reference_is_the_real_one() -> None:
    """The YAML printed in the reference parses to the same config as config/gateway.yaml."""
    printed = re.search(r"```yaml\n(.*?)```", section(CONFIGURATION, "Gateway config"), re.S)
    assert printed
    shipped = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    assert yaml.safe_load(printed.group(1)) == shipped


def test_the_printed_panel_is_valid() -> None:
    """The example panel of the reference loads."""
    printed = re.search(r"```yaml\n(.*?)```", section(CONFIGURATION, "Panels:"), re.S)
    assert printed
    msgspec.convert(yaml.safe_load(printed.group(1)), Panel, strict=True)


# --- operations: metric names and log fields -----------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every series name the gateway's registry exports."""
    from fusion_engine.server.metrics import Metrics

    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "histogram": ["", "_bucket", "_count", "_sum"],
    }
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def test_operations_uses_only_real_metric_names() -> None:
    """Every fusion_* name in docs (alerts included) is a series the gateway exports."""
    exported = exported_metric_names()
    for page in DOCS.glob("*.md"):
        used = set(re.findall(r"\bfusion_[a-z_]+\b", page.read_text()))
        unknown = {name for name in used if name.startswith("fusion_") and name not in exported}
        unknown -= {"fusion_engine"}  # the package name
        assert not unknown, f"{page.name}: no such metric {sorted(unknown)}"


def test_operations_lists_every_metric_family() -> None:
    operations = (DOCS / "operations.md").read_text()
    from fusion_engine.server.metrics import Metrics

    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}" in operations, f"operations.md does not describe {name}"


def test_operations_lists_every_request_log_field() -> None:
    """The fields of the per-request log line (observe.py) are all described."""
    tree = ast.parse((ROOT / "src/fusion_engine/server/observe.py").read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value == "request"
    ]
    assert calls, "no request log line found in observe.py"
    fields = {keyword.arg for keyword in calls[0].keywords if keyword.arg}
    assert {"route", "status", "latency_ms"} <= fields
    logs = section((DOCS / "operations.md").read_text(), "Logs")
    missing = {field for field in fields if f"`{field}`" not in logs}
    assert not missing, f"operations.md: undocumented log fields {sorted(missing)}"


# --- CI, pre-commit, Makefile --------------------------------------------------------------------


def test_ci_workflow_runs_ci_run_with_redis_on_push_and_pull_request() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    redis = job["services"]["redis"]
    assert redis["image"] == "redis:7" and "6379:6379" in redis["ports"]
    python = [step for step in job["steps"] if "setup-python" in step.get("uses", "")]
    assert python and python[0]["with"]["python-version"] == "3.11"
    assert any(step.get("run", "").strip().endswith("bash .ci/run") for step in job["steps"])


def test_ci_run_lints_then_tests() -> None:
    script = (ROOT / ".ci/run").read_text()
    assert script.index("make lint") < script.index("make test")


def test_ci_run_guards_cpu_per_request_after_the_tests() -> None:
    """The CPU regression guard runs after the suite, before the long real-model e2e."""
    commands = [line.split("#")[0].strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    steps = [command for command in commands if command.startswith("make ")]
    assert steps.index("make test") < steps.index("make bench-guard") < steps.index("make e2e")


def test_ci_run_drives_real_agents_after_the_tests() -> None:
    """`make agents-e2e` runs in CI, after the suite, and opts in the tests that drive the agents
    it installed (tests/test_agents_e2e.py) and the README's agent snippets."""
    commands = [line.split("#")[0].strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    steps = [command for command in commands if command.startswith("make ")]
    assert steps.index("make test") < steps.index("make agents-e2e")
    target = re.search(r"^agents-e2e:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert target and "scripts/install-agents.sh" in target.group(1)
    for needed in ("AGENTS_E2E=1", "AGENTS_BIN_DIR=", "tests/test_agents_e2e.py"):
        assert needed in target.group(1)
    assert "tests/test_readme_agents.py" in target.group(1)


def test_pre_commit_hooks_are_local_and_make_lint_runs_them() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    hooks = config["repos"][0]["hooks"]
    assert {hook["language"] for hook in hooks} == {"system"}
    entries = " ".join(hook["entry"] for hook in hooks)
    for tool in ("ruff check", "ruff format --check", "mypy --strict", "check_text_files.py"):
        assert tool in entries
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert lint and "pre-commit run --all-files" in lint.group(1)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"ok\n", b"ok\n"),
        (b"", b""),
        (b"no newline", b"no newline\n"),
        (b"blank lines\n\n\n", b"blank lines\n"),
        (b"trailing  \nspace\t\n", b"trailing\nspace\n"),
        (b"windows \r\nfile\r\n", b"windows\r\nfile\r\n"),
        (b"  \n\n", b""),
    ],
)
def test_text_file_hook_fixes_whitespace(before: bytes, after: bytes) -> None:
    assert load_script("scripts/check_text_files.py").fixed(before) == after


def test_text_file_hook_rewrites_and_fails(tmp_path: Path) -> None:
    checker = load_script("scripts/check_text_files.py")
    good, bad = tmp_path / "good.md", tmp_path / "bad.md"
    good.write_bytes(b"fine\n")
    bad.write_bytes(b"line  \n\n")
    assert checker.main(["--check", str(good), str(bad)]) == 1
    assert bad.read_bytes() == b"line  \n\n"
    assert checker.main([str(good), str(bad)]) == 1
    assert bad.read_bytes() == b"line\n"
    assert checker.main([str(good), str(bad)]) == 0


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_pre_commit_install_works_in_a_fresh_repository(tmp_path: Path) -> None:
    """CONTRIBUTING's `.venv/bin/pre-commit install` sets up the commit hook."""
    pre_commit = ROOT / ".venv" / "bin" / "pre-commit"
    if not pre_commit.exists():
        pytest.skip("pre-commit is not installed in .venv (make install)")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(ROOT / ".pre-commit-config.yaml", tmp_path)
    subprocess.run([str(pre_commit), "validate-config"], cwd=tmp_path, check=True)
    ran = subprocess.run([str(pre_commit), "install"], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / ".git" / "hooks" / "pre-commit").exists()


# --- every command the docs print is run somewhere, or says what it needs ------------------------

#: Command (prefix) -> where it is run. A command outside this list must sit in a block marked
#: `<!-- not run by the tests: REASON -->` (e.g. it needs a Docker engine or a real provider key).
RUN_ELSEWHERE = {
    "make install": ".ci/run (every make target installs first)",
    "make lint": ".ci/run",
    "make test": ".ci/run",
    "make bench-guard": ".ci/run",
    "make image": ".ci/run",
    "make schema": "test_make_schema_writes_the_committed_file",
    "make deploy-configmaps": "tests/test_deploy.py (test_configmaps_are_generated_from_...)",
    ".venv/bin/pre-commit install": "test_pre_commit_install_works_in_a_fresh_repository",
    ".venv/bin/pytest": "make test (.ci/run)",
    "curl -s": "tests/test_readme.py (test_curl_examples_work)",
    "curl -sN": "tests/test_readme.py (test_curl_examples_work)",
    ".venv/bin/python evals/run_eval.py --panel budget --dataset sample": (
        "tests/test_readme.py (test_eval_quick_start_runs)"
    ),
    "-d '{": "the curl command it continues (tests/test_readme.py)",
    # README "Teams, keys and budgets": the gateway run as printed, its curl and fusion spend.
    "export TEAM_A_KEY=": "tests/test_readme_keys.py (the printed fixture)",
    ".venv/bin/fusion serve": "tests/test_readme_keys.py (the printed fixture runs fusion serve)",
    "OTEL_EXPORTER_OTLP_ENDPOINT=": "tests/test_tracing.py (test_the_readme_tracing_commands_...)",
    # README "Use it from your agent": the Claude Code block, run as printed (opt-in).
    "export ANTHROPIC_": "tests/test_readme_agents.py (test_claude_code_block_...)",
    "export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1": "tests/test_readme_agents.py",
    "claude -p": "tests/test_readme_agents.py (test_claude_code_block_prints_the_fused_answer)",
}
NOT_RUN = "<!-- not run by the tests:"


def shell_blocks() -> list[tuple[str, str, bool]]:
    """(file, block, marked as not run) for every shell block of README, CONTRIBUTING, SECURITY
    and docs/."""
    pages = [ROOT / name for name in ("README.md", "CONTRIBUTING.md", "SECURITY.md")]
    pages += sorted(DOCS.glob("*.md"))
    blocks = []
    for page in pages:
        lines = page.read_text().splitlines()
        fence = None
        for number, line in enumerate(lines):
            if not line.lstrip().startswith("```"):
                continue
            if fence is None:
                fence = number
                continue
            if lines[fence].strip() in ("```sh", "```bash", "```console"):
                marked = fence > 0 and NOT_RUN in lines[fence - 1]
                block = "\n".join(text.strip() for text in lines[fence + 1 : number])
                blocks.append((page.name, block, marked))
            fence = None
    return blocks


def test_every_printed_command_is_run_or_marked() -> None:
    blocks = shell_blocks()
    assert blocks, "no shell blocks found"
    for page, block, marked in blocks:
        if marked:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split(" #")[0].strip()
            if not command or command.startswith("#"):
                continue
            assert any(command.startswith(known) for known in RUN_ELSEWHERE), (
                f"{page}: `{command}` is neither run by a test or .ci/run nor marked {NOT_RUN}"
            )


def test_printed_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    for page, block, _ in shell_blocks():
        for target in re.findall(r"^make ([a-z-]+)", block, re.M):
            assert target in targets, f"{page}: no make target {target!r}"


def test_doc_links_resolve() -> None:
    """Relative links in README, CONTRIBUTING, SECURITY and docs/ point at files that exist."""
    pages = [ROOT / name for name in ("README.md", "CONTRIBUTING.md", "SECURITY.md")]
    for page in [*pages, *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


# --- the repository stands alone ------------------------------------------------------------------

#: Documents of the team's, kept outside the repository, that users do not have. Spelt in pieces
#: so that this file does not match itself.
OUTSIDE_DOCUMENTS = [
    "design" + ".md",
    "../" + "shared",
    "shared" + "/",
    "wire" + ".md",
    "agents" + "-wire",
]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_no_tracked_file_points_at_documents_outside_the_repository() -> None:
    """Comments and docs describe the fields here, never in a design file users do not have."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    tracked = [ROOT / name for name in listed.split("\0") if name]
    assert len(tracked) > 100, "git ls-files found too few files"
    offending = []
    for path in tracked:
        if not path.is_file():
            continue
        text = path.read_bytes().decode(errors="replace")
        offending += [
            f"{path.relative_to(ROOT)}: {name}" for name in OUTSIDE_DOCUMENTS if name in text
        ]
    assert not offending, offending


# --- compatibility: what each API supports, and what is tested ---------------------------------

COMPATIBILITY = (DOCS / "compatibility.md").read_text()
README = (ROOT / "README.md").read_text()


def route_shape(path: str) -> str:
    """A route path with its parameters blanked: ``/v1/models/{model_id:path}`` → ``/v1/models/{}``."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_compatibility_claims_tests_only_for_routes_the_server_has() -> None:
    """A status row that does not say "not yet tested" names routes the server really has and
    test files that really exist."""
    rows = table_rows(section(COMPATIBILITY, "What is tested here"))
    served = {route_shape(path) for path in server_routes()}
    assert "/v1/chat/completions" in served and len(served) > 5
    claimed = 0
    for api, routes, status in rows:
        paths = {route_shape(path) for path in re.findall(r"/v1/[^\s`]*", routes)}
        assert paths, f"{api}: no route"
        if "not yet tested" in status:
            continue
        claimed += 1
        assert paths <= served, f"{api}: the server has no {sorted(paths - served)}"
        named = re.findall(r"tests/test_\w+\.py", status)
        assert named, f"{api}: says tested without naming a test file"
    assert claimed >= 3


def test_every_test_file_the_compatibility_page_names_exists() -> None:
    for name in re.findall(r"tests/\w+\.py", COMPATIBILITY):
        assert (ROOT / name).is_file(), f"docs/compatibility.md names {name}, which does not exist"


def test_compatibility_page_covers_every_api_and_client() -> None:
    headings = [line for line in COMPATIBILITY.splitlines() if line.startswith("## ")]
    for api in ("Model ids", "Chat Completions", "Responses", "Anthropic Messages", "Embeddings"):
        assert any(api in heading for heading in headings), f"no section for {api}"
    clients = " ".join(row[0] for row in table_rows(section(COMPATIBILITY, "## Clients")))
    for client in ("openai", "anthropic", "Agents SDK", "Claude Code", "Codex CLI", "pydantic-ai",
                   "LangChain", "LiteLLM"):  # fmt: skip
        assert client in clients, f"no row for {client}"


def test_readme_compatibility_names_the_apis_clients_and_prefix_tips() -> None:
    """The README's short Compatibility section: APIs, clients, the model-id tips and the link."""
    text = " ".join(section(README, "Compatibility").split())
    for route in ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/models",
                  "/v1/embeddings"):  # fmt: skip
        assert f"`{route}`" in text, route
    for client in ("`openai` SDKs", "`anthropic` SDK", "OpenAI Agents SDK", "Claude Code",
                   "Codex CLI", "pydantic-ai", "LangChain", "LiteLLM"):  # fmt: skip
        assert client in text, client
    for tip in ("`fusion-<panel>`", "`openai/fusion/<panel>`", "OpenAIResponsesModel(",
                'MultiProvider(unknown_prefix_mode="model_id")'):  # fmt: skip
        assert tip in text, tip
    assert "](docs/compatibility.md)" in text
