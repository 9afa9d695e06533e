"""The web page at /ui, driven in real headless Chromium (Debian's ``chromium`` through Playwright
for Python) against the real gateway (`fusion serve`) and the fake upstream on 127.0.0.1.

Browser tests skip with the reason when Playwright or Chromium is missing; with ``CI=true`` that is
a failure. Screenshots go to ``$FUSION_UI_SCREENSHOTS`` (default: ``<tmp>/fusion-ui-screenshots``),
never into the repository.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from fusion_engine.results import FusionResult, PanelResponse
from fusion_engine.server.ui import CONTENT_SECURITY_POLICY
from fusion_engine.stage_timing import stage_times
from fusion_engine.testing import FakeUpstream, Reply

from .helpers import (
    ROOT,
    FakeInThread,
    GatewayProcess,
    gateway_env,
    reset_fake,  # noqa: F401 - the `fake` fixture: the shared fake upstream, reset
    wait_until,
)

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

KEY = "ui-test-key"
FILES = ROOT / "tests" / "ui_files"
CHROMIUM = Path(os.environ.get("FUSION_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SCREENSHOTS = Path(
    os.environ.get("FUSION_UI_SCREENSHOTS", Path(tempfile.gettempdir()) / "fusion-ui-screenshots")
)
ALPHA, BETA, GAMMA, JUDGE = "ui/alpha", "ui/beta", "ui/gamma", "ui/judge"
LEFT, RIGHT = "ui/left", "ui/right"
FUSED = "Paris is the capital of France, as the whole panel agrees."
MODULES = (
    "app.js", "api.js", "sse.js", "markdown.js", "diff.js", "dom.js", "views.js",
    "conversation.js", "runs.js", "store.js", "timing.js",
)  # fmt: skip
FINISHED = re.compile(r"^(done|failed|stopped)$")


def _missing_browser() -> str | None:
    if sync_playwright is None:
        return "playwright is not installed (pip install playwright; Chromium comes from Debian)"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FUSION_CHROMIUM)"
    return None


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(upstream: FakeInThread) -> Iterator[GatewayProcess]:
    process = GatewayProcess(gateway_env(upstream.fake, KEY, panels=FILES / "panels"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = _missing_browser()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason}; CI=true makes a missing prerequisite a failure")
        pytest.skip(reason)
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Session:
    """One browser tab on the page, with what it reported: alert dialogs, errors, console."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self) -> Page:
        """Load /ui and wait until the panels are in the picker."""
        self.page.goto(f"{self.base_url}/ui")
        expect(self.page.locator("html[data-ready=true]")).to_have_count(1)
        return self.page

    def run(self, prompt: str, *, panel: str = "compare", wait: bool = True) -> None:
        """Fill the prompt, run, and (by default) wait until the run has finished."""
        page = self.page
        page.get_by_label("Panel", exact=True).select_option(panel)
        page.get_by_label("Prompt", exact=True).fill(prompt)
        page.get_by_role("button", name="Run fusion").click()
        if wait:
            self.wait_finished()

    def wait_finished(self) -> None:
        expect(self.page.locator("#answer")).to_have_attribute("data-state", FINISHED)

    def card(self, index: int) -> Any:
        return self.page.locator(f'.card[data-index="{index}"]')


@pytest.fixture
def make_session(browser: Browser, gateway: GatewayProcess) -> Iterator[Callable[..., Session]]:
    """New isolated tabs (own storage); the key is stored first unless ``key`` says otherwise.

    Contexts bypass the page's Content-Security-Policy: Playwright's ``wait_for_function`` and
    ``evaluate`` run strings, which that policy forbids (``test_page_runs_under_its_own_csp``
    checks the page with it), and the HTML-injection test then proves the Markdown renderer's
    escaping on its own, without the policy as a safety net.
    """
    contexts: list[Any] = []

    def make(
        *, key: str | None = KEY, width: int = 1280, height: int = 900, csp: bool = False
    ) -> Session:
        context = browser.new_context(
            viewport={"width": width, "height": height},
            bypass_csp=not csp,
            accept_downloads=True,
        )
        contexts.append(context)
        if key is not None:
            context.add_init_script(
                "if (localStorage.getItem('fusion-ui.api-key') === null)"
                f" localStorage.setItem('fusion-ui.api-key', {json.dumps(key)});"
            )
        return Session(context.new_page(), gateway.base_url)

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def session(make_session: Callable[..., Session]) -> Session:
    return make_session()


def script_panel(
    fake: FakeUpstream,
    *,
    judge: Reply | None = None,
    gamma: Reply | None = None,
    slow: bool = False,
) -> None:
    """Three members and a judge; ``slow``: members finish far apart and the judge streams slowly,
    so every intermediate state stays on screen long enough to be seen."""
    pause = 0.8 if slow else 0.0
    fake.script(ALPHA, Reply(text="Paris is the capital of France.", delay_s=0.1, cost=0.001))
    fake.script(BETA, Reply(text="The capital of France is Paris.", delay_s=pause, cost=0.002))
    fake.script(
        GAMMA,
        gamma or Reply(text="France's capital city is **Paris**.", delay_s=1.5 * pause, cost=0.003),
    )
    fake.script(
        JUDGE,
        judge or Reply(text=FUSED, chunk_size=4, chunk_delay_s=0.1 if slow else 0.0, cost=0.004),
    )


# --- serving (no browser needed) -------------------------------------------------------------


def test_page_and_assets_are_served_by_the_gateway(gateway: GatewayProcess) -> None:
    """/ui and /ui/ serve the page without a key, with its modules and a strict CSP."""
    for path in ("/ui", "/ui/", "/ui/index.html"):
        reply = httpx.get(gateway.base_url + path)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/html")
        assert reply.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert '<script type="module" src="/ui/app.js">' in reply.text
    for name in MODULES:
        reply = httpx.get(f"{gateway.base_url}/ui/{name}")
        assert reply.status_code == 200, name
        assert reply.headers["content-type"].startswith("text/javascript"), name
    css = httpx.get(f"{gateway.base_url}/ui/style.css")
    assert css.headers["content-type"].startswith("text/css")
    assert httpx.get(f"{gateway.base_url}/ui/missing.js").status_code == 404
    for outside in ("%2e%2e/__init__.py", "%2e%2e/%2e%2e/%2e%2e/pyproject.toml"):
        assert httpx.get(f"{gateway.base_url}/ui/{outside}").status_code == 404, outside
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


def test_page_files_ship_inside_the_package() -> None:
    """The page is package data (found through importlib.resources), so the wheel carries it."""
    static = resources.files("fusion_engine.server.ui") / "static"
    names = {entry.name for entry in static.iterdir()}
    assert {"index.html", "style.css"} <= names
    index = (static / "index.html").read_text()
    assert set(MODULES) <= names
    assert "/ui/style.css" in index


#: The one script /docs may load: Scalar at an exact version, with its subresource integrity.
PINNED_SCALAR = re.compile(
    r'<script src="(https://cdn\.jsdelivr\.net/npm/@scalar/api-reference@\d+\.\d+\.\d+'
    r'/dist/browser/standalone\.js)" integrity="sha384-[A-Za-z0-9+/]{64}" crossorigin="anonymous"'
)


def _csp(header: str) -> dict[str, list[str]]:
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: values for name, *values in directives}


def test_docs_page_pins_its_script_with_integrity_under_a_csp(gateway: GatewayProcess) -> None:
    """/docs loads Scalar from an exact version with an SRI hash, and its CSP allows that script
    and nothing else (no @latest, no inline script, no other origin)."""
    for path in ("/docs", "/docs/", "/docs/scalar"):
        reply = httpx.get(gateway.base_url + path)
        assert reply.status_code == 200, path
        assert reply.headers["content-type"].startswith("text/html")
        pinned = PINNED_SCALAR.search(reply.text)
        assert pinned, reply.text
        assert "@latest" not in reply.text
        external = re.findall(r'(?:src|href)="(https?:[^"]*)"', reply.text)
        assert external == [pinned.group(1)]
        csp = _csp(reply.headers["content-security-policy"])
        assert csp["script-src"] == [pinned.group(1)]
        assert csp["default-src"] == ["'none'"]
        assert csp["connect-src"] == ["'self'"]
        assert csp["frame-ancestors"] == ["'none'"]
        assert csp["base-uri"] == ["'none'"]
        assert reply.headers["x-content-type-options"] == "nosniff"
    schema = httpx.get(gateway.base_url + "/docs/openapi.json")
    assert schema.status_code == 200 and schema.json()["openapi"].startswith("3.")


def test_docs_page_refuses_a_tampered_script(browser: Browser, gateway: GatewayProcess) -> None:
    """A CDN that serves other bytes under the pinned URL is refused by the browser (SRI)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        console: list[str] = []
        outside: list[str] = []
        page.on("console", lambda message: console.append(message.text))

        def serve(route: Any) -> None:
            url = route.request.url
            if url.startswith(gateway.base_url):
                route.continue_()
            elif "@scalar/api-reference@" in url:
                route.fulfill(
                    status=200,
                    content_type="text/javascript",
                    headers={"access-control-allow-origin": "*"},
                    body="window.__tampered = true;",
                )
            else:
                outside.append(url)
                route.abort()

        page.route("**/*", serve)
        page.goto(f"{gateway.base_url}/docs")
        page.wait_for_load_state("load")
        assert page.evaluate("window.__tampered ?? null") is None
        assert any("integrity" in line for line in console), console
        assert outside == []
    finally:
        context.close()


# --- browser ---------------------------------------------------------------------------------


def test_key_is_asked_once_and_kept(make_session: Callable[..., Session]) -> None:
    """A first visit asks for the key; it is kept in localStorage and not asked again."""
    ui = make_session(key=None)
    page = ui.open()
    dialog = page.get_by_role("dialog", name="API key")
    expect(dialog).to_be_visible()
    expect(page.get_by_role("textbox", name="API key")).to_be_focused()
    page.get_by_role("textbox", name="API key").fill(KEY)
    page.get_by_role("button", name="Save key").click()
    expect(dialog).to_be_hidden()
    assert page.evaluate("localStorage.getItem('fusion-ui.api-key')") == KEY
    page.reload()
    expect(page.locator("html[data-ready=true]")).to_have_count(1)
    expect(dialog).to_be_hidden()
    expect(page.locator("#key-button")).to_have_text("API key: saved")


def test_panel_picker_shows_members_judge_and_estimated_cost(session: Session) -> None:
    """Panels come from GET /panels with their members, judge, template and estimated cost."""
    page = session.open()
    picker = page.get_by_label("Panel", exact=True)
    assert picker.locator("option").all_inner_texts() == ["compare (3 members)", "pair (2 members)"]
    picker.select_option("compare")
    info = page.locator("#panel-info")
    expect(info.locator(".member-list li")).to_have_text([ALPHA, BETA, GAMMA])
    expect(info).to_contain_text(f"Judge{JUDGE}")
    expect(info).to_contain_text("Templatedefault")
    expect(info.locator(".estimate")).to_have_text("$0.002000 – $0.010000 per query")
    picker.select_option("pair")
    expect(info.locator(".member-list li")).to_have_text([LEFT, RIGHT])
    expect(info.locator(".estimate")).to_have_text("no estimate given")


def test_cards_fill_in_live_and_the_fused_answer_streams(
    session: Session, fake: FakeUpstream
) -> None:
    """Member cards fill in as each member finishes; the judge's text streams in after them."""
    script_panel(fake, slow=True)
    page = session.open()
    session.run("What is the capital of France?", wait=False)

    # The first member's card is filled while the slower members are still out.
    expect(session.card(0)).to_have_attribute("data-state", "ok")
    expect(session.card(0)).to_contain_text("Paris is the capital of France.")
    assert session.card(1).get_attribute("data-state") == "waiting"
    assert session.card(2).get_attribute("data-state") == "waiting"
    expect(page.get_by_role("status")).to_contain_text("members finished")

    # Part of the fused answer is on screen while the judge is still writing.
    snapshot = page.wait_for_function(
        """() => {
            const answer = document.querySelector('#answer');
            const text = answer.textContent.trim();
            if (answer.getAttribute('aria-busy') !== 'true' || !text.startsWith('Pa')) return false;
            const states = [...document.querySelectorAll('.card')].map((c) => c.dataset.state);
            return {text, states};
        }""",
        polling=20,
    ).json_value()
    assert snapshot["states"] == ["ok", "ok", "ok"]
    assert FUSED.startswith(snapshot["text"]) and len(snapshot["text"]) < len(FUSED)

    session.wait_finished()
    expect(page.locator("#answer")).to_have_text(FUSED)
    expect(page.locator("#answer")).to_have_attribute("aria-busy", "false")
    for index, text in enumerate(
        [
            "Paris is the capital of France.",
            "The capital of France is Paris.",
            "France's capital city is Paris.",
        ]
    ):
        card = session.card(index)
        expect(card.locator(".badge")).to_have_text("answered")
        expect(card.locator(".card-body")).to_have_text(text)
        expect(card.locator(".facts")).to_contain_text("Latency")
        expect(card.locator(".facts")).to_contain_text("in ·")
    expect(session.card(2).locator(".card-body strong")).to_have_text("Paris")
    expect(session.card(0).locator(".facts")).to_contain_text("Cost$0.001000")
    expect(page.get_by_role("status")).to_contain_text("Done: 3 of 3 members answered")
    assert [request.model for request in fake.received].count(JUDGE) == 1
    assert fake.received[-1].stream is True  # the judge streamed through to the page
    assert not session.errors


def test_failing_member_shows_its_error(session: Session, fake: FakeUpstream) -> None:
    """A member that fails gets a failed card with the provider's message; the rest fuse."""
    script_panel(fake, gamma=Reply(status=400, error_message="model is overloaded right now"))
    page = session.open()
    session.run("What is the capital of France?")
    card = session.card(2)
    expect(card).to_have_attribute("data-state", "failed")
    expect(card.locator(".badge")).to_have_text("failed")
    expect(card.locator(".error-text")).to_contain_text("model is overloaded right now")
    expect(page.locator("#cost-table tbody tr").nth(2)).to_contain_text("failed: http_error")
    expect(page.locator("#answer")).to_have_text(FUSED)
    expect(page.get_by_role("status")).to_contain_text("2 of 3 members answered")


def test_cost_table_lists_every_call_and_the_total(session: Session, fake: FakeUpstream) -> None:
    """Latency, tokens and cost per member and for the judge, and the total of the fusion."""
    script_panel(fake)
    page = session.open()
    session.run("What is the capital of France?")
    table = page.locator("#cost-table")
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.locator("th")).to_have_text(["member 1", "member 2", "member 3", "judge"])
    expect(rows.locator("td:last-child")).to_have_text(
        ["$0.001000", "$0.002000", "$0.003000", "$0.004000"]
    )
    expect(table.locator("tfoot .total-cost")).to_have_text("$0.010000")
    exported = page.evaluate("JSON.parse(localStorage.getItem('fusion-ui.history'))[0].result")
    total_tokens = table.locator("tfoot td").nth(3)
    expect(total_tokens).to_have_text(str(exported["tokens_in"]))
    assert exported["tokens_in"] == sum(
        r["tokens_in"] for r in [*exported["panel_responses"], *exported["judge_attempts"]]
    )
    expect(page.get_by_role("status")).to_contain_text("total cost $0.010000")


def _ms(text: str) -> float:
    """A duration as the page writes it ("850 ms", "1.24 s") in milliseconds."""
    number, unit = text.split()
    return float(number) * (1000 if unit == "s" else 1)


def test_cost_table_says_where_the_time_went(session: Session, fake: FakeUpstream) -> None:
    """Members scripted at 0.3 s and a judge at 0.2 s show as the members' and the judge's time;
    the gateway's share (timed by the page, as the stream has no Server-Timing) is small, and
    the three add up to what the page waited. A run re-opened from the history shows the same."""
    for slug in (ALPHA, BETA, GAMMA):
        fake.script(slug, Reply(text="Paris is the capital of France.", delay_s=0.3))
    fake.script(JUDGE, Reply(text=FUSED, delay_s=0.2))
    page = session.open()
    session.run("What is the capital of France?")
    stages = page.locator("#cost-table tfoot tr.stage")
    expect(stages.locator("th")).to_have_text(["members", "judge", "gateway"])
    cells = stages.locator('td[data-label="Latency"]')
    texts = cells.all_inner_texts()
    shown = dict(zip(["members", "judge", "gateway"], map(_ms, texts), strict=True))
    assert 300 <= shown["members"] < 1500
    assert 200 <= shown["judge"] < 1500
    assert shown["gateway"] < 400  # the gateway's own share plus a local network and a browser
    run = page.evaluate("JSON.parse(localStorage.getItem('fusion-ui.history'))[0]")
    fusion_ms = run["result"]["total_latency_ms"]
    assert shown["members"] + shown["judge"] == pytest.approx(fusion_ms, abs=2)  # 1 ms rounding
    assert sum(shown.values()) == pytest.approx(run["elapsed_ms"], abs=2)
    expect(stages.nth(2)).to_contain_text("this page waited")

    page.reload()
    expect(page.locator("html[data-ready=true]")).to_have_count(1)
    page.locator(".history-item").first.click()
    expect(cells).to_have_text(texts)


def test_stage_split_matches_the_gateways(session: Session) -> None:
    """The page's timing.js splits a result as stage_timing.py does (judge fallbacks summed, a
    cache hit all gateway); a run without its own clock has no gateway figure."""
    attempts = [PanelResponse(index=0, model="j1", latency_ms=50.0, error="down"),
                PanelResponse(index=0, model="j2", latency_ms=150.0)]  # fmt: skip
    cases = [
        (FusionResult(answer="x", total_latency_ms=500.0, judge_attempts=attempts), 512.5),
        (FusionResult(answer="x", total_latency_ms=420.0), 400.0),  # clocks disagree: not < 0
        (FusionResult(answer="x", total_latency_ms=900.0, cached=True), 3.0),
    ]
    page = session.open()
    split = page.evaluate(
        """async ([cases]) => {
            const timing = await import('/ui/timing.js');
            return {
                cases: cases.map(([result, elapsed]) => timing.stageTimes(result, elapsed)),
                unmeasured: timing.stageTimes(cases[0][0], null),
                none: timing.stageTimes(null, 10),
            };
        }""",
        [[[msgspec.to_builtins(result), elapsed] for result, elapsed in cases]],
    )
    assert split["cases"] == [
        msgspec.to_builtins(stage_times(result, elapsed)) for result, elapsed in cases
    ]
    assert split["unmeasured"] == {"members_ms": 300, "judge_ms": 200, "gateway_ms": None}
    assert split["none"] is None


def test_word_diff_between_members_and_against_the_fused_answer(
    session: Session, fake: FakeUpstream
) -> None:
    """The diff marks words only in one answer; any two answers, the fused one included."""
    script_panel(fake)
    page = session.open()
    session.run("What is the capital of France?")
    page.get_by_label("From", exact=True).select_option(label=f"#1 {ALPHA}")
    page.get_by_label("To", exact=True).select_option(label=f"#2 {BETA}")
    diff = page.locator("#diff")
    expect(diff.locator(".diff-a del")).to_have_text(["Paris is"])
    expect(diff.locator(".diff-b ins")).to_have_text(["is Paris."])
    expect(diff.locator(".diff-a")).to_contain_text("the capital of France.")
    expect(page.locator("#diff-summary")).to_contain_text(
        f"4 words in common (67%), 2 only in #1 {ALPHA}, 2 only in #2 {BETA}"
    )
    page.get_by_label("To", exact=True).select_option(label="Fused answer")
    expect(diff.locator(".diff-b h5")).to_have_text("To: Fused answer")
    expect(diff.locator(".diff-b ins")).to_have_text(["as the whole panel agrees."])
    expect(diff.locator(".diff-a del")).to_have_count(0)
    page.get_by_role("button", name="Swap").click()
    expect(page.get_by_label("From", exact=True)).to_have_value("fused")
    expect(diff.locator(".diff-a del")).to_have_text(["as the whole panel agrees."])


def test_agreement_between_members_is_visible(session: Session, fake: FakeUpstream) -> None:
    """A pairwise similarity matrix, the words every member uses, and the most central member."""
    script_panel(fake)
    page = session.open()
    session.run("What is the capital of France?")
    matrix = page.locator("#agreement table")
    expect(matrix.locator('td[data-pair="m0:m0"]')).to_have_text("100%")
    expect(matrix.locator('td[data-pair="m0:m1"]')).to_have_text("67%")
    expect(matrix.locator('td[data-pair="m1:m0"]')).to_have_text("67%")
    expect(matrix.locator('td[data-pair="fused:m0"]')).to_have_count(1)
    expect(page.locator("#agreement .shared mark")).to_have_text(["paris", "capital", "france"])
    expect(page.locator("#agreement .closest")).to_contain_text("Closest to the rest of the panel")
    expect(session.card(0).locator(".agreement-fact")).to_contain_text("Agreement")


def test_wrong_key_says_401_plainly(
    make_session: Callable[..., Session], fake: FakeUpstream
) -> None:
    """A rejected key is named as such, with a way to enter another one."""
    script_panel(fake)
    ui = make_session(key="not-the-key")
    page = ui.open()
    ui.run("What is the capital of France?")
    notice = page.get_by_role("alert")
    expect(notice).to_contain_text("The gateway rejected the API key (401")
    expect(page.get_by_role("status")).to_contain_text("401")
    expect(page.locator("#answer")).to_contain_text("No fused answer")
    assert fake.received == []  # nothing was spent
    page.get_by_role("button", name="Enter API key").click()
    expect(page.get_by_role("dialog", name="API key")).to_be_visible()
    page.get_by_role("textbox", name="API key").fill(KEY)
    page.get_by_role("button", name="Save key").click()
    expect(notice).to_be_hidden()
    page.get_by_role("button", name="Run fusion").click()
    ui.wait_finished()
    expect(page.get_by_role("status")).to_contain_text("Done")


def test_gateway_errors_are_shown_as_messages(session: Session, fake: FakeUpstream) -> None:
    """An in-band stream error (every member failed) and an HTTP error (413) both read as text."""
    # Two different statuses: members refusing alike would be relayed as that status instead.
    fake.script(LEFT, Reply(status=400, error_message="left is down"))
    fake.script(RIGHT, Reply(status=401, error_message="right is down"))
    page = session.open()
    session.run("Anyone there?", panel="pair")
    expect(page.get_by_role("alert")).to_contain_text(
        "The fusion failed: every panel member failed"
    )
    expect(page.get_by_role("status")).to_have_attribute("data-tone", "error")
    expect(session.card(0).locator(".error-text")).to_contain_text("left is down")
    expect(session.card(1).locator(".error-text")).to_contain_text("right is down")

    session.run("x" * 70_000, panel="pair")  # over the test config's 64 KiB body limit
    expect(page.get_by_role("alert")).to_contain_text("The gateway answered 413")


def test_model_output_cannot_inject_html(session: Session, fake: FakeUpstream) -> None:
    """Scripts, event handlers and javascript: links in answers and errors stay inert text."""
    hostile = (
        "Look: <script>window.__pwned = 1; alert(1)</script>\n\n"
        '<img src=x onerror="window.__pwned = 2; alert(2)">\n\n'
        '[click me](javascript:alert(3)) and <a href="javascript:alert(4)">here</a>\n\n'
        '[quoted](https://example.com/" onmouseover="alert(5)) `<b>code</b>`\n\n'
        '<iframe src="javascript:alert(6)"></iframe> <svg onload=alert(7)></svg>'
    )
    fake.script(ALPHA, Reply(text=hostile, delay_s=0.05))
    fake.script(BETA, Reply(text="A plain answer about Paris."))
    fake.script(GAMMA, Reply(status=400, error_message='<img src=x onerror="alert(8)">'))
    fake.script(JUDGE, Reply(text=hostile, chunk_size=7, chunk_delay_s=0.01))
    page = session.open()
    session.run("Say something dangerous")
    expect(page.get_by_role("status")).to_contain_text("Done")
    expect(session.card(0)).to_contain_text("<script>window.__pwned = 1; alert(1)</script>")
    expect(session.card(0)).to_contain_text("<img src=x onerror=")
    expect(session.card(2)).to_contain_text('<img src=x onerror="alert(8)">')
    expect(page.locator("#answer")).to_contain_text("<iframe src=")
    # The diff and the re-opened run render the same text again, through other paths.
    page.get_by_label("From", exact=True).select_option(label=f"#1 {ALPHA}")
    page.get_by_label("To", exact=True).select_option(label="Fused answer")
    page.locator(".history-item").first.click()
    expect(page.get_by_role("status")).to_contain_text("Done")

    found = page.evaluate(
        """() => ({
            pwned: window.__pwned ?? null,
            injected: document.querySelectorAll('img, iframe, svg, object, embed').length,
            inlineScripts: [...document.scripts].filter((s) => !s.src).length,
            scriptSources: [...document.scripts].map((s) => new URL(s.src).pathname),
            handlers: [...document.querySelectorAll('*')].flatMap((el) =>
                [...el.attributes].map((a) => a.name).filter((name) => name.startsWith('on'))),
            links: [...document.querySelectorAll('a[href]:not(.skip-link)')]
                .map((a) => a.getAttribute('href')),
        })"""
    )
    assert session.dialogs == []
    assert found["pwned"] is None
    assert found["injected"] == 0
    assert found["inlineScripts"] == 0
    assert found["scriptSources"] == ["/ui/app.js"]
    assert found["handlers"] == []
    assert all(link.startswith("https://") for link in found["links"])
    assert "https://example.com/" in found["links"]  # the quote ended the URL
    assert not session.errors


#: Markdown that tried to turn model text into tags or attributes (issue 15, item 7): each line
#: is one trick. The first nested an <a> with ``onfocus`` inside another link's href.
MARKDOWN_ATTACKS = (
    "see http://evil.example/[y](http://a/autofocus/onfocus=alert;//)",
    "[http://evil.example/x](http://a/onmouseover=alert;//) autolink inside link text",
    "[see https://b.example/[z](http://c/onclick=alert;//)](https://d.example/)",
    "[q](https://a.example/\"onmouseover=\"alert(1)) and https://a.example/'onfocus='alert(2)'",
    "<https://a.example/> https://a.example/<img/src=x/onerror=alert(3)>",
    "[js](javascript:alert(4)) [JS](JAVASCRIPT:alert(5)) [d](data:text/html,alert(6))",
    "[sp](https://a.example/ onfocus=alert(7)) [nl](https://a.example/\tjavascript:alert(8))",
    "**[bold](https://a.example/x) _http://e.example/[w](http://f/onblur=alert;//)_ __x__**",
    "~~http://g.example/~~~~[h](http://h/onload=alert;//)~~ *[i](https://i.example/)*",
    '<b onclick=alert(9)>b</b> <details open ontoggle=alert(10)>d</details> <a href="x">a</a>',
    "&lt;img src=x onerror=alert(11)&gt; &#x3C;svg onload=alert(12)&#x3E; &quot;",
    "[e](https://a.example/&quot;onfocus=&quot;x=13) [e2](https://a.example/&#34;x=1)",
    "`[c](http://c/onfocus=alert;//)` [`code` label](https://c.example/)",
    "\u0000[n](http://n/onfocus=alert;//)\u0000 \u00000\u0000 placeholders",
    "| h [t](http://t/onfocus=alert;//) |\n|---|\n| http://u.example/[v](http://v/x=1) |",
    "# heading http://w.example/[x](http://x/onfocus=alert;//)",
    "- item http://y.example/[z](http://z/onfocus=alert;//)\n  - nested **[q](https://q/)**",
    '> quote [r](https://r.example/"><script>alert(14)</script>)',
    '```js"onload=alert(15)\n<script>alert(16)</script>\n```',
)
#: What the renderer may produce: these tags, each with only these attributes (``class`` and
#: ``aria-hidden`` are the page's own, never model text).
_PLAIN_TAGS = (
    "P", "BR", "STRONG", "EM", "DEL", "CODE", "UL", "LI", "BLOCKQUOTE", "HR",
    "TABLE", "THEAD", "TBODY", "TR", "TD", "H1", "H2", "H3", "H4", "H5", "H6",
)  # fmt: skip
MARKDOWN_TAGS: dict[str, frozenset[str]] = {
    **{tag: frozenset() for tag in _PLAIN_TAGS},
    "A": frozenset({"href", "rel", "target"}),
    "DIV": frozenset({"class"}),
    "SPAN": frozenset({"class", "aria-hidden"}),
    "PRE": frozenset({"data-lang"}),
    "OL": frozenset({"start"}),
    "TH": frozenset({"scope"}),
}
#: Collects, for every element below ``roots``, its tag and attributes, plus nested links.
_MARKUP_OF = """(roots) => ({
    elements: roots.flatMap((root) => [...root.querySelectorAll('*')]).map((el) => ({
        tag: el.tagName, attributes: Object.fromEntries([...el.attributes].map((a) => [a.name, a.value])),
    })),
    nestedLinks: roots.reduce((n, root) => n + root.querySelectorAll('a a, a[href] [href]').length, 0),
    text: roots.map((root) => root.textContent).join('\\n'),
})"""


def _assert_inert_markup(found: dict[str, Any]) -> None:
    """Only the renderer's own tags and attributes; links are http(s) with the safe three."""
    assert found["nestedLinks"] == 0
    for element in found["elements"]:
        tag, attributes = element["tag"], element["attributes"]
        assert tag in MARKDOWN_TAGS, element
        assert set(attributes) <= MARKDOWN_TAGS[tag], element
        assert not [name for name in attributes if name.startswith("on")], element
        if tag == "A":
            href = attributes["href"]
            assert re.match(r"^https?://[^\s\"'<>\\]+$", href), element
            assert attributes["rel"] == "noopener noreferrer nofollow", element
            assert attributes["target"] == "_blank", element
        if tag == "PRE" and "data-lang" in attributes:
            assert re.fullmatch(r"[\w+#.-]+", attributes["data-lang"]), element


def test_markdown_attacks_stay_text_in_the_page(session: Session, fake: FakeUpstream) -> None:
    """Model answers full of link, autolink, entity and tag tricks render with no attribute or
    tag of their own: every element is one the renderer makes, links are plain http(s)."""
    hostile = "\n\n".join(MARKDOWN_ATTACKS)
    fake.script(ALPHA, Reply(text=hostile, delay_s=0.05))
    fake.script(BETA, Reply(text=MARKDOWN_ATTACKS[0]))
    fake.script(GAMMA, Reply(text="**" + MARKDOWN_ATTACKS[2] + "**"))
    fake.script(JUDGE, Reply(text=hostile, chunk_size=5))
    page = session.open()
    session.run("Say something dangerous")
    expect(page.get_by_role("status")).to_contain_text("Done")
    found = page.evaluate(
        f"({_MARKUP_OF})([document.querySelector('#answer'), "
        "...document.querySelectorAll('.card-body')])"
    )
    _assert_inert_markup(found)
    assert "onfocus=alert" in found["text"]  # the attack is shown as text, not dropped
    handlers = page.evaluate(
        """() => [...document.querySelectorAll('*')].flatMap((el) =>
            [...el.attributes].map((a) => a.name).filter((name) => name.startsWith('on')))"""
    )
    assert handlers == []
    assert session.dialogs == [] and not session.errors


def test_markdown_renderer_builds_only_its_own_nodes(session: Session) -> None:
    """Each attack on its own, straight through the renderer: its own tags only, and the links
    it does make go where the text said (http(s) only, quotes and brackets end a URL)."""
    page = session.open()
    results = page.evaluate(
        f"""async (sources) => {{
            const md = await import('/ui/markdown.js');
            const markupOf = {_MARKUP_OF};
            return sources.map((source) => {{
                const root = document.createElement('div');
                root.append(md.renderMarkdown(source));
                return {{source, ...markupOf([root]),
                         links: [...root.querySelectorAll('a')].map((a) => [a.getAttribute('href'), a.textContent])}};
            }});
        }}""",
        list(MARKDOWN_ATTACKS),
    )
    for found in results:
        _assert_inert_markup(found)
    links = {r["source"]: r["links"] for r in results}
    assert links[MARKDOWN_ATTACKS[0]] == [
        ["http://evil.example/", "http://evil.example/"],
        ["http://a/autofocus/onfocus=alert;//", "y"],
    ]
    assert links[MARKDOWN_ATTACKS[1]] == [
        ["http://a/onmouseover=alert;//", "http://evil.example/x"]
    ]
    assert links[MARKDOWN_ATTACKS[3]] == [
        ["https://a.example/", "https://a.example/"],
        ["https://a.example/", "https://a.example/"],
    ]
    assert links[MARKDOWN_ATTACKS[5]] == []  # javascript: and data: stay text
    assert [href for href, _ in links[MARKDOWN_ATTACKS[11]]] == [
        "https://a.example/&quot;onfocus=&quot;x=13",
        "https://a.example/&#34;x=1",
    ]  # entities are text: a browser shows them as typed, never decodes them into a quote


def test_history_reopens_a_run_and_exports_it(
    session: Session, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Runs are kept in the browser; one click re-opens one, and it exports as JSON."""
    for model in (ALPHA, BETA, GAMMA, JUDGE):
        fake.script_matching(model, "Paris", Reply(text=f"{model} on Paris", cost=0.001))
        fake.script_matching(model, "Rome", Reply(text=f"{model} on Rome", cost=0.001))
    page = session.open()
    session.run("Tell me about Paris")
    session.run("Tell me about Rome")
    expect(page.locator("#answer")).to_have_text(f"{JUDGE} on Rome")
    page.reload()
    expect(page.locator("html[data-ready=true]")).to_have_count(1)
    items = page.locator(".history-item")
    expect(items).to_have_count(2)
    expect(items.locator(".history-prompt")).to_have_text(
        ["Tell me about Rome", "Tell me about Paris"]
    )

    items.nth(1).click()
    expect(page.locator("#answer")).to_have_text(f"{JUDGE} on Paris")
    expect(session.card(1).locator(".card-body")).to_have_text(f"{BETA} on Paris")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("Tell me about Paris")
    expect(page.locator("#cost-table tfoot .total-cost")).to_have_text("$0.004000")
    expect(items.nth(1)).to_have_attribute("aria-current", "true")
    expect(page.locator("#results")).to_be_focused()

    with page.expect_download() as download:
        page.get_by_role("button", name="Export JSON").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.startswith("fusion-compare-") and saved.suffix == ".json"
    run = json.loads(saved.read_text())
    assert run["format"] == "fusion-engine-ui-run"
    assert run["status"] == "done"
    assert run["body"] == {"panel": "compare", "web_search": False, "prompt": "Tell me about Paris"}
    assert run["result"]["answer"] == f"{JUDGE} on Paris"
    assert [m["content"] for m in run["result"]["panel_responses"]] == [
        f"{m} on Paris" for m in (ALPHA, BETA, GAMMA)
    ]
    assert run["result"]["total_cost"] == pytest.approx(0.004)
    assert run["request_id"]


def test_conversation_system_prompt_and_web_search_reach_the_panel(
    session: Session, fake: FakeUpstream
) -> None:
    """Several messages, a system prompt and web search go to the members as sent."""
    script_panel(fake)
    page = session.open()
    page.get_by_label("System prompt").fill("Answer in one sentence.")
    page.get_by_label("Prompt", exact=True).fill("What is the capital of France?")
    page.get_by_role("button", name="Add a message").click()
    expect(page.get_by_label("Message 2 from", exact=True)).to_have_value("assistant")
    expect(page.get_by_label("Message 2 text", exact=True)).to_be_focused()
    page.get_by_label("Message 2 text", exact=True).fill("Paris.")
    page.get_by_role("button", name="Add a message").click()
    page.get_by_label("Message 3 text", exact=True).fill("And of Italy?")
    page.get_by_label("Web search").check()
    page.get_by_role("button", name="Run fusion").click()
    session.wait_finished()
    expect(page.get_by_role("status")).to_contain_text("Done")
    member = next(r for r in fake.received if r.model == ALPHA)
    assert member.body["messages"] == [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert member.body["plugins"] == [{"id": "web"}]

    # A conversation must end with the user: the page says so instead of sending it.
    page.get_by_label("Message 3 from", exact=True).select_option("assistant")
    received = len(fake.received)
    page.get_by_role("button", name="Run fusion").click()
    expect(page.get_by_role("alert")).to_contain_text("must end with a user message")
    page.get_by_role("button", name="Remove message 3").click()
    expect(page.get_by_label("Message 3 text", exact=True)).to_have_count(0)
    assert len(fake.received) == received


def test_stop_cancels_the_fusion(session: Session, fake: FakeUpstream) -> None:
    """Stop aborts the stream; the gateway cancels the member still running."""
    script_panel(fake, gamma=Reply(hang=True), slow=True)
    page = session.open()
    session.run("What is the capital of France?", wait=False)
    expect(session.card(1)).to_have_attribute("data-state", "ok")
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("status")).to_contain_text("Stopped")
    expect(page.get_by_role("button", name="Run fusion")).to_be_enabled()
    assert wait_until(lambda: GAMMA in fake.cancelled, timeout_s=10)


def test_keyboard_only(session: Session, fake: FakeUpstream) -> None:
    """Tab order follows the form; Ctrl+Enter runs; the skip link and history work by keyboard."""
    script_panel(fake)
    page = session.open()
    order = []
    for _ in range(8):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert order == [
        "skip-link",
        "key-button",
        "panel",
        "system",
        "turn-1-text",
        "add-turn",
        "web-search",
        "run",
    ]
    page.get_by_label("Prompt", exact=True).focus()
    page.keyboard.type("What is the capital of France?")
    page.keyboard.press("Control+Enter")
    session.wait_finished()
    expect(page.locator("#answer")).to_have_text(FUSED)

    page.locator(".skip-link").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#results")).to_be_focused()

    page.locator(".history-item").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#results")).to_be_focused()

    page.locator("#key-button").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog", name="API key")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog", name="API key")).to_be_hidden()
    expect(page.locator("#key-button")).to_be_focused()

    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((el) => el.checkVisibility())
            .filter((el) => !(el.labels?.length || el.getAttribute('aria-label')
                              || el.textContent.trim()))
            .map((el) => el.outerHTML)"""
    )
    assert unlabelled == []


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.mark.parametrize(("name", "width", "height"), [("desktop", 1280, 900), ("phone", 390, 844)])
def test_screenshots_at_desktop_and_phone_widths(
    make_session: Callable[..., Session], fake: FakeUpstream, name: str, width: int, height: int
) -> None:
    """The page lays out at a laptop and a phone width (saved as screenshots, not committed)."""
    script_panel(
        fake,
        judge=Reply(text=FUSED + "\n\n- short\n- list\n\n```\ncode()\n```"),
        gamma=Reply(status=400, error_message="gamma is overloaded"),
    )
    ui = make_session(width=width, height=height)
    page = ui.open()
    ui.run("What is the capital of France?")
    page.get_by_label("From", exact=True).select_option(label=f"#1 {ALPHA}")
    page.get_by_label("To", exact=True).select_option(label=f"#2 {BETA}")
    layout = page.evaluate(
        """() => ({
            overflow: document.documentElement.scrollWidth - window.innerWidth,
            cards: [...document.querySelectorAll('.card')].map((c) => c.getBoundingClientRect().top),
            form: document.querySelector('.compose').getBoundingClientRect().toJSON(),
            results: document.querySelector('#results').getBoundingClientRect().toJSON(),
        })"""
    )
    assert layout["overflow"] <= 0  # nothing sticks out sideways
    if name == "phone":
        # One column: cards stacked, the result below the form.
        assert layout["cards"] == sorted(layout["cards"]) and len(set(layout["cards"])) == 3
        assert layout["results"]["top"] >= layout["form"]["bottom"]
    else:
        # Side by side: form and result share the top, the first cards share a row.
        assert layout["results"]["left"] >= layout["form"]["right"]
        assert layout["cards"][0] == layout["cards"][1]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shot_width, shot_height = _png_size(path)
    assert shot_width == width and shot_height >= height
    assert path.stat().st_size > 20_000  # a rendered page, not a blank one


def test_page_runs_under_its_own_csp(
    make_session: Callable[..., Session], fake: FakeUpstream
) -> None:
    """With its Content-Security-Policy enforced the page still works and breaks no rule."""
    script_panel(fake)
    ui = make_session(csp=True)
    page = ui.open()
    ui.run("What is the capital of France?")
    expect(page.locator("#answer")).to_have_text(FUSED)
    expect(page.locator("#cost-table tfoot .total-cost")).to_have_text("$0.010000")
    violations = [line for line in ui.console if "Content Security Policy" in line]
    assert violations == []
    assert not ui.errors


def test_markdown_and_diff_modules(session: Session) -> None:
    """The renderer escapes before it formats; the LCS word diff aligns as expected."""
    page = session.open()
    out = page.evaluate(
        """async () => {
            const md = await import('/ui/markdown.js');
            const diff = await import('/ui/diff.js');
            const sse = await import('/ui/sse.js');
            const render = (text) => {
                const root = document.createElement('div');
                root.append(md.renderMarkdown(text));
                return root.innerHTML;
            };
            const chunks = ['event: member\\r', '\\ndata: {"a":', '1}\\n\\n: keep-alive\\n\\n',
                            'event: judge\\ndata: x\\ndata: y\\n\\nevent: cut\\ndata: z'];
            const stream = new ReadableStream({start(c) {
                for (const chunk of chunks) c.enqueue(new TextEncoder().encode(chunk));
                c.close();
            }});
            const events = [];
            for await (const e of sse.readEvents(stream)) events.push(e);
            return {
                heading: render('# Title'),
                code: render('```js\\nconst a = "<b>";\\n```'),
                inline: render('use `a<b>` and **bold** _it_'),
                list: render('- one\\n- two\\n  - nested\\n1. first'),
                link: render('[ok](https://x.org/a?b=1&c=2) [bad](javascript:alert(1))'),
                quote: render('> "quoted" <i>'),
                table: render('| a | b |\\n|---|---|\\n| <1> | 2 |'),
                ops: diff.diffWords('a b c d', 'a x c d e').ops.map((o) => o.op + ':' + (o.a ?? o.b)),
                same: diff.similarity('The cat sat.', 'the cat sat'),
                none: diff.similarity('one two', 'three four'),
                shared: diff.sharedTerms(['Paris is big', 'Big city: Paris!', 'paris, big']),
                events,
            };
        }"""
    )
    assert out["heading"] == "<h3>Title</h3>"
    assert '<pre data-lang="js"><code>const a = "&lt;b&gt;";</code></pre>' in out["code"]
    assert (
        out["inline"] == "<p>use <code>a&lt;b&gt;</code> and <strong>bold</strong> <em>it</em></p>"
    )
    assert out["list"] == (
        "<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul><ol><li>first</li></ol>"
    )
    assert '<a href="https://x.org/a?b=1&amp;c=2" rel="noopener noreferrer nofollow"' in out["link"]
    assert "[bad](javascript:alert(1))" in out["link"]
    assert out["quote"] == '<blockquote><p>"quoted" &lt;i&gt;</p></blockquote>'
    assert "<td>&lt;1&gt;</td>" in out["table"] and '<th scope="col">a</th>' in out["table"]
    assert out["ops"] == ["same:a", "del:b", "ins:x", "same:c", "same:d", "ins:e"]
    assert out["same"] == 1
    assert out["none"] == 0
    assert out["shared"] == ["paris", "big"]
    assert out["events"] == [
        {"event": "member", "data": '{"a":1}', "id": None},
        {"comment": "keep-alive"},
        {"event": "judge", "data": "x\ny", "id": None},
    ]
