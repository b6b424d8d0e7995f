"""A real browser: two headless Chromium windows on two server processes chat in one room.

They also lose Redis and get it back: the page says so, disables sending, and
reconnects by itself. Screenshots of both states are saved in the test's
temporary directory (``connected.png``, ``disconnected.png``).

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
from typing import TypeVar

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

T = TypeVar("T")
TIMEOUT = 15.0
#: Reconnecting after a Redis restart: the server notices the loss within 3 s, the
#: page retries every 5 s at most, and the server's own reconnection takes up to 2 s.
RECONNECT_TIMEOUT = 30.0
HEADLESS_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
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


def wait(
    driver: WebDriver,
    condition: Callable[[WebDriver], T],
    what: str,
    timeout: float = TIMEOUT,
) -> T:
    """The first true value of ``condition``, polled for up to ``timeout`` seconds."""
    try:
        return WebDriverWait(driver, timeout).until(condition)
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
            windows.append(open_window(browser, server.url(f"/room/{room}/")))
        window_a, window_b = windows
        for window, server in ((window_a, a), (window_b, b)):
            browser.switch_to.window(window)
            wait(browser, connected, "the page to join its room")
            assert f":{server.port}" in browser.find_element(By.ID, "status").text
            assert labels(browser) == {"room": "Room", "name": "Your name", "message": "Message"}
            assert sending_enabled(browser)

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
        close_windows(browser, windows)
    # The page has an icon of its own: no request for /favicon.ico (daphne logs each request).
    for server in servers:
        assert "favicon" not in server.output(), server.describe()


@pytest.mark.parametrize("example", ["django", "trio"])
def test_redis_lost_and_back(example: str, browser: WebDriver, tmp_path: Path) -> None:
    """Redis stops: both windows say so in plain words and cannot send; it restarts:
    they reconnect by themselves, and a line typed before the loss is sent afterwards."""
    spec = {"django": DJANGO, "trio": TRIO}[example]
    redis = RedisServer.launch()
    try:
        with running_servers([spec, spec], redis.url, tmp_path / "logs") as (a, b):
            windows: list[str] = []
            try:
                room = unique("restart")
                for server in (a, b):
                    windows.append(open_window(browser, server.url(f"/room/{room}/")))
                    wait(browser, connected, "the page to join its room")
                window_a, window_b = windows
                browser.switch_to.window(window_a)
                browser.find_element(By.ID, "message").send_keys("typed before the loss")
                browser.save_screenshot(str(tmp_path / "connected.png"))

                redis.stop()
                for window in windows:
                    browser.switch_to.window(window)
                    # The state goes on to "connecting" at each attempt: read both at once.
                    status = wait(
                        browser, disconnected_status, "the page to notice that Redis is gone"
                    )
                    assert not sending_enabled(browser)
                    assert "The chat server cannot reach Redis." in status, status
                    assert "Reconnecting in" in status, status
                    assert "Disconnected. The chat server cannot reach Redis." in log_text(browser)
                    for internal in ("4500", "code", "Errno", "refused", "127.0.0.1"):
                        assert internal not in status + log_text(browser), (internal, status)
                browser.switch_to.window(window_a)
                assert message_box(browser) == "typed before the loss"  # kept while disconnected
                browser.save_screenshot(str(tmp_path / "disconnected.png"))

                redis.start()  # same port, empty data set
                for window in windows:
                    browser.switch_to.window(window)
                    wait(browser, connected, "the page to reconnect", RECONNECT_TIMEOUT)
                    assert sending_enabled(browser)
                    assert "Connected again." in log_text(browser)
                browser.switch_to.window(window_a)
                assert message_box(browser) == "typed before the loss"
                browser.find_element(By.ID, "message").send_keys(Keys.ENTER)
                browser.switch_to.window(window_b)
                wait(browser, lambda d: "typed before the loss" in log_text(d), "A's line in B")
                browser.save_screenshot(str(tmp_path / "reconnected.png"))
            finally:  # before the servers stop (daphne may crash on SIGTERM with open sockets)
                close_windows(browser, windows)
    finally:
        redis.close()


def open_window(browser: WebDriver, url: str) -> str:
    """A new window (the size of a small laptop screen) showing ``url``; its handle."""
    browser.switch_to.new_window("window")
    browser.set_window_size(1024, 768)
    browser.get(url)
    return str(browser.current_window_handle)


def close_windows(browser: WebDriver, windows: list[str]) -> None:
    for window in windows:
        browser.switch_to.window(window)
        browser.close()
    browser.switch_to.window(browser.window_handles[0])


def connected(driver: WebDriver) -> bool:
    return driver.find_element(By.ID, "status").get_attribute("data-state") == "connected"


def disconnected_status(driver: WebDriver) -> str:
    """The status line if the page is in the disconnected state, else ""."""
    return str(
        driver.execute_script(
            "const s = document.getElementById('status');"
            "return s.dataset.state === 'disconnected' ? s.textContent : '';"
        )
    )


def sending_enabled(driver: WebDriver) -> bool:
    box, button = driver.find_element(By.ID, "message"), driver.find_element(By.ID, "send")
    assert box.is_enabled() == button.is_enabled()
    return bool(box.is_enabled())


def message_box(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "message").get_attribute("value"))


def labels(driver: WebDriver) -> dict[str, str]:
    """The text of each label, by the id of the input it names."""
    return {
        str(label.get_attribute("for")): str(label.text)
        for label in driver.find_elements(By.TAG_NAME, "label")
    }
