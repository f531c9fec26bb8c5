"""`cnnctl report`: one HTML file, opened by headless Chromium with the network off."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cnnctl.cli import main

from conftest import CHROMEDRIVER, CHROMIUM, require_chromium


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium that can reach nothing: hosts resolve nowhere, the network is offline."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    yield driver
    driver.quit()


def open_page(browser, path: Path) -> tuple[list[list], list[dict]]:
    """Each image's (loaded, natural width, alt) and the console's messages."""
    browser.get_log("browser")  # what earlier pages left
    browser.get(path.resolve().as_uri())
    images = browser.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    return images, browser.get_log("browser")


@pytest.fixture
def evaluated(run_copy, runner) -> Path:
    done = runner.invoke(main, ["evaluate", "small", "--runs-dir", str(run_copy)])
    assert done.exit_code == 0, done.output
    return run_copy / "small"


def test_the_page_opens_offline_with_every_image_and_no_console_error(
    browser, evaluated, runner, tmp_path
):
    result = runner.invoke(
        main, ["report", str(evaluated), "--output", str(tmp_path / "mail" / "small.html")]
    )
    assert result.exit_code == 0, result.output
    page = tmp_path / "mail" / "small.html"
    assert f"wrote {page}" in result.output
    images, console = open_page(browser, page)
    assert [alt for *_, alt in images] == [
        "loss and metrics per epoch",
        "confusion matrix",
        "errors",
    ]
    assert all(loaded and width > 0 for loaded, width, _ in images), images
    assert console == []
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    for shown in ("test accuracy", "per class", "worst examples", "Export checks", "units: 10"):
        assert shown in text


def test_the_check_catches_an_image_from_the_network(browser, tmp_path):
    """The browser test can fail: a page that fetches is seen (image not loaded, an error)."""
    page = tmp_path / "fetching.html"
    page.write_text("<!DOCTYPE html><img alt='remote' src='https://example.com/a.png'>")
    images, console = open_page(browser, page)
    assert images == [[True, 0, "remote"]]
    assert any(entry["level"] == "SEVERE" for entry in console), console


def test_names_from_the_run_folder_stay_text(browser, evaluated, runner):
    """A class name that is markup is shown as text: no new element, no script."""
    evaluation = json.loads((evaluated / "evaluation.json").read_text())
    name = "<img src=x onerror=alert(1)>"
    evaluation["per_class"][name] = evaluation["per_class"].pop("3")
    (evaluated / "evaluation.json").write_text(json.dumps(evaluation))
    os.symlink("/etc/hostname", evaluated / "stolen.png")  # leads outside: never embedded
    result = runner.invoke(main, ["report", str(evaluated)])
    assert result.exit_code == 0, result.output
    page = evaluated / "report.html"
    images, console = open_page(browser, page)
    assert len(images) == 3 and console == []
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.read_text()
    assert "stolen" not in page.read_text()


def test_a_run_still_training_gets_its_curves_drawn_from_metrics_csv(browser, run_copy, runner):
    run = run_copy / "small"
    (run / "curves.png").unlink()
    (run / "metrics.json").unlink()
    result = runner.invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    images, console = open_page(browser, run / "report.html")
    assert [alt for *_, alt in images] == ["loss and metrics per epoch"] and images[0][1] > 0
    assert "not evaluated yet: cnnctl evaluate" in (run / "report.html").read_text()


def test_an_unknown_run_exits_2(runner, run_copy):
    result = runner.invoke(main, ["report", "smal", "--runs-dir", str(run_copy)])
    assert result.exit_code == 2
    assert "Error: smal: no such run (did you mean 'small'?)" in result.output


def test_an_unwritable_output_exits_2_and_names_it(runner, run_copy, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = runner.invoke(
        main, ["report", str(run_copy / "small"), "--output", str(blocked / "r.html")]
    )
    assert result.exit_code == 2
    assert f"Error: {blocked / 'r.html'}: cannot write the report" in result.output
    assert blocked.read_text() == ""
