"""The dashboard in a real browser: headless Debian chromium driven by Selenium against the embedded
API (as `make serve` runs it). upload -> create job -> watch it finish -> confusion matrix ->
predictions -> a sweep's leaderboard and promotion; a screenshot of every page under test-output/dashboard/; any browser console error fails.
It runs on clipadapt-starter and three classes of its shifted `outlines` task, so the screenshots (the
README's) show a model that learns, not chance."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from tests.conftest import REPO, migrate, require_service, write_example_dataset
from tests.e2e.conftest import Processes

SHOTS = REPO / "test-output" / "dashboard"
CLASSES = ("circle", "square", "triangle")  # the first three of the `outlines` task


@pytest.fixture(scope="module")
def shapes_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of outlined shapes, 8 train / 4 val / 4 test images each."""
    return write_example_dataset(tmp_path_factory.mktemp("shapes") / "shapes.zip", "--task", "outlines",
                                 "--classes", "3", "--train", "8", "--val", "4", "--test", "4")


@pytest.fixture(autouse=True)
def _shots_dir() -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "failure.png").unlink(missing_ok=True)


@pytest.fixture
def browser() -> Iterator[object]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    require_service("chromium + chromium-driver (apt-get install chromium chromium-driver)",
                    None if chromium and driver_path else FileNotFoundError("chromium or chromedriver not on PATH"))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager must not try to download a browser or driver.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver, expected: list[str]) -> list[dict]:
    """Console errors (goog:loggingPrefs) other than ``expected`` ones (each matched by substring at most once)."""
    left = list(expected)
    errors = []
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        match = next((x for x in left if x in entry["message"]), None)
        if match is None:
            errors.append(entry)
        else:
            left.remove(match)
    return errors


def test_dashboard_flow_in_a_browser(processes: Processes, tmp_path: Path, shapes_zip: Path, browser) -> None:
    try:
        flow(browser, processes, tmp_path, shapes_zip)
    except BaseException:
        # What the page showed and logged when it failed, for the CI log.
        browser.save_screenshot(str(SHOTS / "failure.png"))
        print("browser log:", browser.get_log("browser"))
        raise


def flow(driver, processes: Processes, tmp_path: Path, shapes_zip: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    env = {"CLIPADAPT_DATA_DIR": str(tmp_path / "data"), "CLIPADAPT_DEVICE": "cpu", "CLIPADAPT_TORCH_THREADS": "1",
           "CLIPADAPT_AUTH": "disabled"}
    migrate(Settings(data_dir=tmp_path / "data").resolved_database_url)
    url = processes.api(env)
    wait = WebDriverWait(driver, 30)

    def shot(name: str) -> None:
        driver.save_screenshot(str(SHOTS / f"{name}.png"))

    def text_of(css: str) -> str:
        return driver.find_element(By.CSS_SELECTOR, css).text

    # Datasets: a broken archive is refused with the offending member named.
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(shapes_zip) as src, zipfile.ZipFile(broken, "w") as dst:
        corrupt = sorted(n for n in src.namelist() if n.startswith("train/square/"))[0]
        for item in src.infolist():
            dst.writestr(item, b"not a png" if item.filename == corrupt else src.read(item))
    driver.get(f"{url}/#/datasets")
    wait.until(EC.presence_of_element_located((By.ID, "ds-file"))).send_keys(str(broken))
    driver.find_element(By.ID, "ds-upload").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main .error"), corrupt.rsplit("/", 1)[1]))
    assert "square" in text_of("main .error")
    shot("datasets-rejected")

    # A valid one: per-split counts and thumbnails of every class.
    driver.find_element(By.ID, "ds-file").send_keys(str(shapes_zip))
    driver.find_element(By.ID, "ds-upload").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "ds-status"), "Uploaded shapes: 3 classes"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "details.dataset[open] .thumbs img")) >= 3 * 6)
    dataset_id = driver.find_element(By.CSS_SELECTOR, "details.dataset[open]").get_attribute("data-id")
    assert [th.text for th in driver.find_elements(By.CSS_SELECTOR, "table.counts thead th")] == ["class", "train", "val", "test", "samples"]
    shot("datasets")

    # New job: the form comes from the schema; the estimate shows before submitting.
    driver.get(f"{url}/#/new?dataset={dataset_id}")
    method = wait.until(EC.presence_of_element_located((By.ID, "job-method")))
    assert {o.text for o in Select(method).options} >= {"auto", "layernorm", "adapter", "compacter"}
    assert wait.until(EC.presence_of_element_located((By.ID, "f-similarity_threshold")))  # auto's own field
    Select(driver.find_element(By.ID, "job-base")).select_by_value("clipadapt-starter")
    Select(method).select_by_value("layernorm")
    # The learning tests' raised rate for a short schedule (tests/core/starter/test_learning.py).
    for field, value in (("f-epochs", "15"), ("f-lr", "0.01")):
        control = wait.until(EC.presence_of_element_located((By.ID, field)))
        control.clear()
        control.send_keys(value)
    driver.find_element(By.ID, "job-name").send_keys("outlines, layernorm")
    wait.until(lambda d: d.find_elements(By.ID, "est-params") and "15 epochs" in text_of("#estimate"))
    assert int(text_of("#est-params").replace(",", "")) > 0
    # Every form control has a label.
    for control in driver.find_elements(By.CSS_SELECTOR, "main input, main select, main textarea"):
        cid = control.get_attribute("id")
        assert cid and driver.find_elements(By.CSS_SELECTOR, f"label[for='{cid}']"), f"unlabelled control {cid!r}"
    shot("new-job")
    driver.find_element(By.ID, "job-submit").click()
    wait.until(lambda d: d.current_url.split("#", 1)[1].startswith("/jobs/"))
    job_id = driver.current_url.rsplit("/", 1)[1]

    # Job page: polls until it succeeds; curves, confusion matrix, per-class accuracy.
    WebDriverWait(driver, 90).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".state-succeeded")))
    wait.until(EC.presence_of_element_located((By.ID, "confusion")))
    cells = driver.find_elements(By.CSS_SELECTOR, "#confusion tbody td")
    assert len(cells) == 9 and sum(int(c.text) for c in cells) == 3 * 4  # 4 test images per class
    assert driver.find_elements(By.CSS_SELECTOR, "#chart-loss canvas") and driver.find_elements(By.CSS_SELECTOR, "#chart-val canvas")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#per-class li")) == 3
    assert "succeeded" in text_of("#events")
    assert driver.find_elements(By.ID, "job-artifact")
    shot("job")
    driver.execute_script("document.getElementById('confusion').scrollIntoView()")
    shot("job-evaluation")

    driver.get(f"{url}/#/jobs")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"#jobs a[href='#/jobs/{job_id}']")))
    shot("jobs")

    # Predict: a test image of each class with the fine-tuned model, compared with the base model zero-shot.
    with zipfile.ZipFile(shapes_zip) as z:
        names = [sorted(n for n in z.namelist() if n.startswith(f"test/{c}/"))[0] for c in CLASSES]
        z.extractall(tmp_path / "images", members=names)
    driver.get(f"{url}/#/predict?job={job_id}")
    files = wait.until(EC.presence_of_element_located((By.ID, "images")))
    files.send_keys("\n".join(str(tmp_path / "images" / n) for n in names))
    driver.find_element(By.ID, "compare").click()
    Select(driver.find_element(By.ID, "b-model")).select_by_value("base:clipadapt-starter")
    driver.find_element(By.ID, "b-classes").send_keys(", ".join(CLASSES))
    driver.find_element(By.ID, "predict-submit").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".compare .prediction")) == 6)
    labels = {e.text for e in driver.find_elements(By.CSS_SELECTOR, ".prediction .label")}
    assert labels and labels <= set(CLASSES)
    shot("predict")

    driver.get(f"{url}/#/models")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"#tuned-models a[href='#/jobs/{job_id}']")))
    shot("models")

    # Sweeps: a quick sweep from the form; the leaderboard and the accuracy/size scatter fill in; promote.
    driver.get(f"{url}/#/sweeps?dataset={dataset_id}")
    wait.until(EC.presence_of_element_located((By.ID, "sweep-form")))
    Select(driver.find_element(By.ID, "sw-base")).select_by_value("clipadapt-starter")
    for control, value in (("sw-lrs", "0.01"), ("sw-seeds", "0"), ("sw-epochs", "5"), ("sw-name", "outlines, quick")):
        element = driver.find_element(By.ID, control)
        element.clear()
        element.send_keys(value)
    for control in driver.find_elements(By.CSS_SELECTOR, "main input, main select"):
        assert driver.find_elements(By.CSS_SELECTOR, f"label[for='{control.get_attribute('id')}']"), control.get_attribute("id")
    shot("sweeps")
    driver.find_element(By.ID, "sweep-submit").click()
    wait.until(lambda d: d.current_url.split("#", 1)[1].startswith("/sweeps/"))
    WebDriverWait(driver, 240).until(EC.presence_of_element_located((By.ID, "sweep-promote")))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr")) == 3  # the quick preset's recipes
    assert driver.find_elements(By.CSS_SELECTOR, "#leaderboard tr.best")
    assert driver.find_elements(By.CSS_SELECTOR, "#chart-scatter canvas")
    assert "Best trial on test: accuracy" in text_of("#sweep-test")
    assert "null" not in text_of("main")
    shot("sweep")
    driver.find_element(By.ID, "sweep-promote").click()
    wait.until(EC.presence_of_element_located((By.ID, "sweep-promoted")))

    # Keyboard: the main navigation is reachable with Tab and focus is visible on it.
    driver.find_element(By.TAG_NAME, "body").send_keys("\ue004")  # Tab
    assert driver.switch_to.active_element.tag_name == "a"

    # Chromium logs every 4xx response as a console error; only the upload refused above is expected.
    assert console_errors(driver, expected=["/datasets - Failed to load resource: the server responded with a status of 400"]) == []
    for name in ("datasets", "new-job", "job", "job-evaluation", "jobs", "predict", "models", "sweeps", "sweep"):
        assert (SHOTS / f"{name}.png").stat().st_size > 1000


def test_dashboard_asks_for_the_api_key(processes: Processes, tmp_path: Path, browser) -> None:
    """Where keys are required, the first 401 opens the key dialog; the key then authorizes every call."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.e2e.conftest import create_key_with_cli

    env = {"CLIPADAPT_DATA_DIR": str(tmp_path / "data"), "CLIPADAPT_DEVICE": "cpu", "CLIPADAPT_TORCH_THREADS": "1"}
    migrate(Settings(data_dir=tmp_path / "data").resolved_database_url)
    key = create_key_with_cli(env, owner="browser")
    url = processes.api(env)
    wait = WebDriverWait(browser, 20)
    browser.get(f"{url}/#/models")
    key_input = wait.until(EC.visibility_of_element_located((By.ID, "key-input")))
    key_input.send_keys(key + "\n")  # Enter submits the dialog's form
    wait.until(EC.presence_of_element_located((By.ID, "base-models")))
    assert "clipadapt-tiny" in browser.find_element(By.ID, "base-models").text
    assert browser.execute_script("return sessionStorage.getItem('clipadapt.apiKey')") == key
    # The 401 that opened the dialog is logged by the browser as a failed resource load; nothing else.
    assert console_errors(browser, expected=["/models - Failed to load resource: the server responded with a status of 401"]) == []
