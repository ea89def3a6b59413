"""The playground page at `/`, in a real headless Chromium: type a prompt, watch text stream in."""

import os
import shutil
import tempfile

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from serving_api_helpers import tiny_served_model

from llmos_jax.serving.server import EngineOptions, background_server


def _browser():
    chromium = shutil.which(os.environ.get("CHROMIUM", "chromium"))
    driver_path = shutil.which(os.environ.get("CHROMEDRIVER", "chromedriver"))
    assert chromium and driver_path, "run tools/browser.sh (tools/test.sh does) to install them"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="llmos-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options), profile


@pytest.fixture(scope="module")
def browser():
    driver, profile = _browser()
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_type_a_prompt_and_see_streamed_text(browser, mode):
    served = tiny_served_model(context=128)
    with background_server(served, engine_options=EngineOptions(max_slots=2)) as running:
        browser.get(running.base_url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: [o.text for o in Select(d.find_element(By.ID, "model")).options]
                   == ["tiny"])
        Select(browser.find_element(By.ID, "mode")).select_by_value(mode)
        for field, value in (("temperature", "0"), ("max-tokens", "24")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "prompt").send_keys("Shall I compare thee")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "finish-reason").text in ("stop", "length"))
        shown = browser.find_element(By.ID, "output").text
        assert shown.strip()
        assert browser.find_element(By.ID, "ttft").text.endswith("s")
        assert int(browser.find_element(By.ID, "tokens").text) >= 1
