"""Open a page in headless Chromium (Debian's chromium + chromedriver, driven by selenium).

Used by the browser tests and to take screenshots for people to look at:

    python -m planner.show.browser plan.html shot.png [--width 1440] [--height 2400]

Never downloads a browser: it uses /usr/bin/chromium and /usr/bin/chromedriver
(tools/install_browser.sh installs both), or $CHROMIUM / $CHROMEDRIVER.
selenium is imported lazily: the planner itself does not need it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--hide-scrollbars", "--force-device-scale-factor=1"]


def find_browser() -> tuple[str | None, str | None, str]:
    """(chromium, chromedriver, why-not) — paths, or None with the reason in why-not."""
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if importlib.util.find_spec("selenium") is None:
        return chromium, driver, "the selenium package is not installed " \
                                 "(bash tools/install_browser.sh)"
    if not chromium or not driver:
        return chromium, driver, "chromium/chromedriver not found (bash tools/install_browser.sh)"
    return chromium, driver, ""


@contextlib.contextmanager
def launch(*, width: int = 1440, height: int = 1000) -> Iterator["object"]:
    """A selenium driver of a fresh headless Chromium (its own throwaway profile)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path, why = find_browser()
    if why:
        raise RuntimeError(why)
    profile = tempfile.mkdtemp(prefix="flowplan-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in FLAGS + [f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def load(driver, path: str | Path, *, timeout_s: float = 30.0) -> bool:
    """Navigate to a local file and wait until the page says it is drawn."""
    driver.set_page_load_timeout(timeout_s)
    driver.get(Path(path).resolve().as_uri())
    deadline = time.monotonic() + timeout_s
    while driver.execute_script(
            "return document.body && document.body.getAttribute('data-rendered')") != "1":
        if time.monotonic() > deadline:
            return False  # the caller's assertions say what is missing
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def open_page(path: str | Path, *, width: int = 1440, height: int = 1000,
              timeout_s: float = 30.0) -> Iterator["object"]:
    """A driver with `path` loaded and its page drawn (body[data-rendered])."""
    with launch(width=width, height=height) as driver:
        load(driver, path, timeout_s=timeout_s)
        yield driver


def full_page_png(driver, width: int) -> bytes:
    """Resize the window to the page's full height, then screenshot it."""
    h = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(h) + 20, 16000))
    time.sleep(0.3)  # the page redraws its charts on resize (debounced 150 ms)
    return driver.get_screenshot_as_png()


def main() -> int:
    ap = argparse.ArgumentParser(description="Screenshot an HTML page with headless Chromium.")
    ap.add_argument("html")
    ap.add_argument("png")
    ap.add_argument("--width", type=int, default=1440)
    ap.add_argument("--height", type=int, default=0, help="0: the whole page")
    args = ap.parse_args()
    with open_page(args.html, width=args.width, height=args.height or 1000) as d:
        png = full_page_png(d, args.width) if not args.height else d.get_screenshot_as_png()
        for entry in d.get_log("browser"):
            print("console:", entry["level"], entry["message"])
    Path(args.png).write_bytes(png)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
