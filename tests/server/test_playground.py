"""The playground page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): it loads, sends a prompt, streams an answer and shows the live numbers."""

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromium-driver are not installed (`apt-get install chromium chromium-driver`; "
                    "scripts/setup.sh --test does it as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_playground_streams_a_chat_reply(browser, tiny_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(tiny_server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "tiny" in d.find_element(By.ID, "model").text)  # /v1/models answered
    browser.find_element(By.ID, "max_tokens").clear()
    browser.find_element(By.ID, "max_tokens").send_keys("24")
    browser.find_element(By.ID, "prompt").send_keys("What is a Python list?")
    browser.find_element(By.ID, "send").click()
    reply = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant[data-done='1']"))
    assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == "What is a Python list?"
    assert reply.find_element(By.CLASS_NAME, "text").text.strip()  # streamed text arrived
    assert "finish:" in reply.text
    assert browser.find_element(By.ID, "ttft").text.endswith(" s")
    assert int(browser.find_element(By.ID, "tokens").text) > 0
    float(browser.find_element(By.ID, "tps").text)  # a number once two chunks arrived
    wait.until(lambda d: d.find_element(By.ID, "kv").text.endswith("/ 256"))  # /stats polled: 256 blocks
    assert browser.find_element(By.ID, "prefix").text.endswith("tokens") or "%" in browser.find_element(By.ID, "prefix").text
    shot = tmp_path / "playground.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("HYBRIDLM_SCREENSHOT_DIR"):  # keep a copy (the README's picture)
        shutil.copy(shot, Path(os.environ["HYBRIDLM_SCREENSHOT_DIR"]) / "playground.png")
