"""The MLflow UI as an FL user sees it, in a real browser: after a real `round` on the embedded stack, the links it
printed open the rounds with their loss and accuracy, their charts, the best run and the registered model with its
alias; another tenant sees none of it. A deep-learning project (the PyTorch example) opens, on a first visit in a
fresh browser profile, in MLflow's model-training mode with its rounds' loss and accuracy in view, nothing over them.

Playwright for Python drives Debian's `chromium` package (FLOPS_CHROMIUM names another executable); no browser is
downloaded. Screenshots go to FLOPS_UI_SCREENSHOTS (default test-artifacts/ui/); `make ui-screenshots` writes
them to docs/images/ for the README.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import conftest
import pytest
from conftest import ROOT, missing_service

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]

ROUNDS = 3
PROJECT = "Demo"
TORCH_PROJECT = "DigitsCNN"
# What MLflow 3's GenAI mode puts in the sidebar; none of it may show for an FL project.
GENAI_ITEMS = ("Judges", "Prompts", "AI Gateway", "Evaluation", "Sessions")
WAIT_MS = 60_000  # the machine may be shared and slow; a page that never shows fails after this
SCREENSHOTS = Path(os.environ.get("FLOPS_UI_SCREENSHOTS", ROOT / "test-artifacts" / "ui"))
ROUND_LINE = re.compile(r"^round (\d+)/\d+: loss ([0-9.]+)  accuracy ([0-9.]+)", re.MULTILINE)


def printed(label: str, text: str) -> str:
    """The link printed after ``label`` in `round`'s summary (the line may wrap onto the next one)."""
    match = re.search(rf"^{re.escape(label)}[^\n]*?\s+(http://\S+)", text, re.MULTILINE)
    assert match, f"`round` printed no {label!r} link:\n{text}"
    return match.group(1)


@pytest.fixture(scope="module")
def chromium():
    path = os.environ.get("FLOPS_CHROMIUM") or shutil.which("chromium")
    if not path:
        missing_service("Debian's chromium package is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tenants; acme runs the project (3 rounds, 2 learners); alice may READ it, nothing else."""
    folder = tmp_path_factory.mktemp("ui-stack")
    stack = conftest.TestStack.create("local", folder, ["acme", "globex"])
    stack.up()
    try:
        done = stack.cli("round", "--tenant", "acme", "--project", PROJECT, "--rounds", str(ROUNDS),
                         "--learners", "2", check=True, timeout=300)
        password = folder / "alice.pw"
        password.write_text("alice-reads-the-demo\n", encoding="utf-8")
        stack.cli("user", "add", "--tenant", "acme", "--name", "alice", "--password-file", str(password), check=True)
        stack.cli("user", "grant", "--tenant", "acme", "--name", "alice", "--project", PROJECT, check=True)
        yield stack, done.stdout, ("alice", "alice-reads-the-demo")
    finally:
        stack.cli("down", "--purge")
        shutil.rmtree(stack.data["state_dir"], ignore_errors=True)


@pytest.fixture(scope="module")
def trained_torch(trained):
    """The PyTorch example trained on acme's server of the same stack (3 rounds, 2 learners)."""
    stack, _, _ = trained
    done = stack.cli("round", "--tenant", "acme", "--project", TORCH_PROJECT, "--rounds", str(ROUNDS), "--learners",
                     "2", "--ml-repo", str(ROOT / "examples" / "pytorch"), "--flavor", "pytorch", check=True,
                     timeout=900)
    return stack, done.stdout


def browse(chromium, login: tuple[str, str], viewport: tuple[int, int] = (1600, 1000)):
    """A fresh browser session (a new profile: no cookies, no local storage) that answers MLflow's basic-auth prompt
    with ``login``."""
    context = chromium.new_context(http_credentials={"username": login[0], "password": login[1]},
                                   viewport={"width": viewport[0], "height": viewport[1]})
    context.set_default_timeout(WAIT_MS)
    return context, context.new_page()


def tidy(page) -> None:
    """Close what MLflow puts over the page (a promotion dialog, its assistant panel, the shared-view banner),
    as a user would."""
    page.keyboard.press("Escape")
    for control in ('[data-component-id="mlflow.assistant.chat_panel.close"]', 'button[aria-label="Hide banner"]'):
        button = page.locator(control)
        if button.count():
            button.first.click()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def grid_rows(page) -> dict[str, str]:
    """Run name -> the text of its whole row (the grid renders the name and the other columns apart)."""
    rows: dict[str, list[str]] = {}
    for row in page.locator("[role=row][row-index]").all():
        rows.setdefault(row.get_attribute("row-index"), []).append(row.inner_text())
    named = {}
    for parts in rows.values():
        text = "\n".join(parts)
        name = re.search(r"round-\d+", text)
        if name:
            named[name.group(0)] = text
    return named


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+", text)]


def test_printed_links_show_the_rounds_charts_best_run_and_champion(trained, chromium):
    stack, output, alice = trained
    rounds = {f"round-{n}": (float(loss), float(acc)) for n, loss, acc in ROUND_LINE.findall(output)}
    assert list(rounds) == [f"round-{n}" for n in range(1, ROUNDS + 1)], output
    best_round = int(re.search(r"^best round:\s+(\d+)", output, re.MULTILINE).group(1))
    version = re.search(r"\(version (\d+),", output).group(1)
    context, page = browse(chromium, alice)
    try:
        # The runs view: every round, with its loss and accuracy as columns.
        page.goto(printed("MLflow UI", output))
        page.get_by_text(f"round-{ROUNDS}", exact=True).first.wait_for()
        tidy(page)
        page.get_by_role("columnheader", name="loss").first.wait_for()
        page.get_by_role("columnheader", name="accuracy").first.wait_for()
        shown = grid_rows(page)
        assert set(shown) == set(rounds), shown
        for name, (loss, accuracy) in rounds.items():
            values = numbers(shown[name])
            assert any(abs(v - loss) < 6e-5 for v in values), (name, loss, shown[name])
            assert any(abs(v - accuracy) < 6e-5 for v in values), (name, accuracy, shown[name])
        shot(page, "runs")

        # The chart view of the same runs: a chart of loss and one of accuracy.
        page.locator("label:has(input[name=runs-view-mode][value=CHART])").click()
        for metric in ("loss", "accuracy"):
            page.get_by_text(f"round-{ROUNDS} ({metric})", exact=True).first.wait_for()
        tidy(page)
        shot(page, "charts")

        # The best run: its name and its description.
        page.goto(printed("best run", output))
        page.get_by_text(f"Round {best_round} of {ROUNDS} of FL project {PROJECT}").first.wait_for()
        assert page.get_by_text(f"round-{best_round}", exact=True).count()
        tidy(page)
        shot(page, "best-run")

        # The registered model's version: alias champion on the version `round` registered.
        page.goto(printed("registered model", output))
        page.get_by_text(f"Version {version}", exact=True).first.wait_for()
        page.get_by_text("champion").first.wait_for()
        page.goto(f"{printed('registered model', output).split('/versions/')[0]}")
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {version}", exact=True))
        assert "champion" in row.first.inner_text()
        tidy(page)
        shot(page, "registered-model")
    finally:
        context.close()


def test_another_tenant_sees_none_of_it(trained, chromium):
    stack, output, _ = trained
    config = stack.load()
    globex_uri = config.tracking_uri(config.tenant("globex"))
    context, page = browse(chromium, stack.admin("globex"))
    try:
        # acme's server does not know globex's admin: the printed link is refused before any page is served.
        answer = page.goto(printed("MLflow UI", output))
        assert answer.status == 401
        assert page.get_by_text("round-1").count() == 0
        # globex's own server: its experiments and models, and no trace of acme's project.
        page.goto(f"{globex_uri}/#/experiments")
        page.get_by_text("Default", exact=True).first.wait_for()
        assert page.get_by_text(PROJECT, exact=True).count() == 0
        page.goto(f"{globex_uri}/#/models")
        page.get_by_text("Share and manage machine learning models").first.wait_for()  # the empty list, loaded
        assert page.get_by_text(PROJECT, exact=True).count() == 0
        tidy(page)
        shot(page, "other-tenant-models")
    finally:
        context.close()


def uncovered_in_view(page, locator) -> bool:
    """The element is inside the viewport (no scrolling needed) and its centre is not covered by anything else."""
    box = locator.bounding_box()
    size = page.viewport_size
    if box is None or box["x"] < 0 or box["y"] < 0 or box["x"] + box["width"] > size["width"] \
            or box["y"] + box["height"] > size["height"]:
        return False
    return locator.evaluate("(el, p) => { const top = document.elementFromPoint(p.x, p.y);"
                            " return top !== null && (el === top || el.contains(top)); }",
                            {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2})


def test_a_deep_learning_project_opens_on_its_rounds_in_model_training_mode_on_a_first_visit(trained_torch,
                                                                                              chromium):
    stack, output = trained_torch
    rounds = {f"round-{n}": (float(loss), float(acc)) for n, loss, acc in ROUND_LINE.findall(output)}
    assert list(rounds) == [f"round-{n}" for n in range(1, ROUNDS + 1)] and "pytorch" in output, output
    # A laptop's window, a fresh profile, and nothing closed by the test: what a first visit shows.
    context, page = browse(chromium, stack.admin("acme"), viewport=(1280, 800))
    try:
        page.goto(printed("MLflow UI", output))
        page.get_by_text(f"round-{ROUNDS}", exact=True).first.wait_for()
        headers = {name: page.get_by_role("columnheader", name=name, exact=True).first for name in ("loss", "accuracy")}
        for header in headers.values():
            header.wait_for()
        page.wait_for_timeout(2000)  # what opens by itself (a panel, a banner) has opened by now
        shot(page, "first-visit-pytorch")
        # Model-training mode: the sidebar offers the experiment's runs and models, none of GenAI's items.
        sidebar = page.locator("nav").first
        assert sidebar.get_by_text("Runs", exact=True).count() and sidebar.get_by_text("Models", exact=True).count()
        for item in GENAI_ITEMS:
            assert page.get_by_text(item, exact=True).count() == 0, f"GenAI item {item!r} on the page"
        # No assistant panel and no banner over the page (the assistant's button may stay in its corner).
        assert page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]').count() == 0
        assert page.locator('button[aria-label="Hide banner"]').count() == 0
        # Each round's loss and accuracy are in view and visible, without scrolling.
        for name, header in headers.items():
            assert uncovered_in_view(page, header), f"the {name} column header is out of view or covered"
        shown = grid_rows(page)
        assert set(shown) == set(rounds), shown
        for row in page.locator("[role=row][row-index]").all():
            for cell in row.locator("[role=gridcell]").all():
                if re.fullmatch(r"\d\.\d+\S*", cell.inner_text().strip()):
                    assert uncovered_in_view(page, cell), f"{cell.inner_text()!r} is out of view or covered"
        for name, (loss, accuracy) in rounds.items():
            values = numbers(shown[name])
            assert any(abs(v - loss) < 6e-5 for v in values), (name, loss, shown[name])
            assert any(abs(v - accuracy) < 6e-5 for v in values), (name, accuracy, shown[name])
    finally:
        context.close()
