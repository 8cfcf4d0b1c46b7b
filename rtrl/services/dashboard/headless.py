"""Opens the dashboard in headless Chromium for the browser test, the overhead benchmark and screenshots.

Uses the system's Chromium and chromedriver (Debian packages `chromium`, `chromium-driver`; the dev
set-up installs them) and never Selenium Manager, which would download a driver: the driver path is
given explicitly and SE_OFFLINE is set. Chromium runs with its background networking (updates, sync,
metrics, safe browsing) off, so the page is the only thing it talks to. Selenium is a dev dependency.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--hide-scrollbars",
    "--mute-audio",
)


class BrowserMissing(RuntimeError):
    """Chromium or chromedriver is not installed; the message says which package to install."""


def open_chromium(width: int = 1500, height: int = 1200) -> Any:
    """A headless Chromium WebDriver that records the console (driver.get_log("browser"))."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            raise BrowserMissing(f"{path} is missing; install the Debian package {package} (scripts/bootstrap --dev).")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def full_page_png(driver: Any, width: int = 1500) -> bytes:
    """A PNG of the whole page at `width` CSS pixels, however long it is."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return base64.b64decode(shot["data"])
