"""A real browser: two headless Chromium windows on two server processes chat in one room.

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``/usr/bin/chromium``
and ``/usr/bin/chromedriver``, or ``$CHROMIUM`` and ``$CHROMEDRIVER``) and the
``selenium`` package; skipped when they are missing, except in CI (``CI=true``),
where ``.ci/run`` installs them. Nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from examples_support import DJANGO, TRIO, ServerProcess, running_servers, unique

from anyio_layer.testing import RedisServer

CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
MISSING = [
    name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path
]

if MISSING and os.environ.get("CI") == "true":
    # .ci/run installs them: in CI a missing browser is a broken install, not a skip.
    raise RuntimeError(f"{' and '.join(MISSING)} not found, but CI must run the browser test")

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{' and '.join(MISSING)} not found (Debian: apt-get install chromium chromium-driver)",
)

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TIMEOUT = 15.0
HEADLESS_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Both windows stay live although only one has the focus.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = Options()
    assert CHROMIUM is not None
    assert CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(params=["django", "trio"])
def servers(
    request: pytest.FixtureRequest, example_redis: RedisServer, tmp_path: Path
) -> Iterator[list[ServerProcess]]:
    spec = {"django": DJANGO, "trio": TRIO}[request.param]
    with running_servers([spec, spec], example_redis.url, tmp_path) as servers:
        yield servers


def wait(driver: WebDriver, condition: Callable[[WebDriver], bool], what: str) -> None:
    try:
        WebDriverWait(driver, TIMEOUT).until(condition)
    except Exception as exc:
        raise AssertionError(
            f"timed out waiting for {what} on {driver.current_url}; status "
            f"{driver.find_element(By.ID, 'status').text!r}, log "
            f"{driver.find_element(By.ID, 'log').text!r}"
        ) from exc


def log_text(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "log").text)


def test_typed_in_one_window_appears_in_the_other(
    browser: WebDriver, servers: list[ServerProcess]
) -> None:
    a, b = servers
    room = unique("browser")
    windows: list[str] = []
    try:
        for server in (a, b):  # one window per server process, both in the room
            browser.switch_to.new_window("window")
            windows.append(browser.current_window_handle)
            browser.get(server.url(f"/room/{room}/"))
        window_a, window_b = windows
        for window, server in ((window_a, a), (window_b, b)):
            browser.switch_to.window(window)
            wait(browser, connected, "the page to join its room")
            assert f":{server.port}" in browser.find_element(By.ID, "status").text

        # Window A: type a message and press Enter.
        browser.switch_to.window(window_a)
        message = browser.find_element(By.ID, "message")
        message.clear()
        message.send_keys("hello from window A", Keys.ENTER)

        browser.switch_to.window(window_b)
        wait(browser, lambda d: "hello from window A" in log_text(d), "A's line in window B")
        assert f"via {a.spec.name} pid" in log_text(browser)  # relayed through A's process
        assert f":{a.port}" in log_text(browser)

        # Window B: answer with the Send button.
        browser.find_element(By.ID, "message").send_keys("hello from window B")
        browser.find_element(By.ID, "send").click()

        browser.switch_to.window(window_a)
        wait(browser, lambda d: "hello from window B" in log_text(d), "B's line in window A")
        lines = log_text(browser).splitlines()
        assert [line.split(" (via")[0].split(": ", 1)[1] for line in lines] == [
            "hello from window A",
            "hello from window B",
        ]
    finally:
        for window in windows:
            browser.switch_to.window(window)
            browser.close()
        browser.switch_to.window(browser.window_handles[0])


def connected(driver: WebDriver) -> bool:
    return driver.find_element(By.ID, "status").get_attribute("data-state") == "connected"
