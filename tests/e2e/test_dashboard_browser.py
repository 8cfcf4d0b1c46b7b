"""The dashboard in headless Chromium against the real stack: `rtrl up` (embedded Redis, the learner, two
replicas, the gateway on ALE Pong at 60 fps, and the dashboard), the page read through Selenium and
compared with what GetStats and GetStatus answer around the read. The link to the newest recording is
checked first, against a dashboard of its own over a recordings directory (the stack's first recording
would come only after its learner has published and a greedy Pong episode has been played), and the table
of a profile game's variables and reward terms against a dashboard of a gateway on the test ROM (Pong has
no profile).

A full-page screenshot is kept in artifacts/dashboard/ (docs/dashboard.png, shown in docs/operating.md, is one).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from file_modules import load_file

from rtrl.grpc_util import health_status
from rtrl.local_redis import free_port
from rtrl.services.dashboard.headless import BrowserMissing, full_page_png, open_chromium
from rtrl.services.dashboard.server import Dashboard, create_server
from rtrl.services.dashboard.settings import DashboardSettings
from rtrl.v1 import env_gateway_pb2, env_gateway_pb2_grpc, learner_pb2, learner_pb2_grpc

pytestmark = pytest.mark.e2e

RUN_SECONDS = 150
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def two_free_ports() -> int:
    """A port whose successor is free too (replica i listens on base + i)."""
    while True:
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dashboard-stack")
    ports = {"gateway": free_port(), "learner": free_port(), "inference": two_free_ports(), "dashboard": free_port()}
    command = [
        sys.executable, "-m", "rtrl.cli", "up",
        "--duration", str(RUN_SECONDS),
        "--inference-replicas", "2",
        "--gateway-port", str(ports["gateway"]),
        "--learner-port", str(ports["learner"]),
        "--inference-base-port", str(ports["inference"]),
        "--dashboard-port", str(ports["dashboard"]),
        "--checkpoint-dir", str(tmp / "checkpoints"),
        "--run-dir", str(tmp / "runs"),
        "--set", "RTRL_CHECKPOINT_EVERY_UPDATES=20",
    ]  # fmt: skip
    log_path = tmp / "rtrl-up.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ports['dashboard']}/"
    info = {
        "url": url,
        "gateway": f"127.0.0.1:{ports['gateway']}",
        "learner": f"127.0.0.1:{ports['learner']}",
        "log": log_path,
    }
    try:
        wait_until(
            lambda: process.poll() is not None or http_get(url + "healthz")[0] == 200, 150, "the dashboard to answer"
        )
        assert process.poll() is None, f"rtrl up exited early:\n{log_path.read_text()}"
        assert health_status(info["gateway"]) == "SERVING"
        # rtrl up prints the URL once the dashboard answers and the rest of the stack has started.
        wait_until(lambda: f"dashboard: {url}" in log_path.read_text(), 30, "rtrl up to print the dashboard's URL")
        yield info
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        driver = open_chromium()
    except BrowserMissing as error:
        pytest.skip(f"headless Chromium is not installed here: {error}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def stubs(stack) -> Iterator[tuple[Any, Any]]:
    gateway_channel = grpc.insecure_channel(stack["gateway"])
    learner_channel = grpc.insecure_channel(stack["learner"])
    yield (
        env_gateway_pb2_grpc.EnvGatewayServiceStub(gateway_channel),
        learner_pb2_grpc.LearnerServiceStub(learner_channel),
    )
    gateway_channel.close()
    learner_channel.close()


@pytest.fixture(scope="module")
def recordings_page(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A dashboard over a recordings directory holding a real mp4 and its index line (nothing else answers)."""
    recordings = tmp_path_factory.mktemp("recordings")
    writer = cv2.VideoWriter(str(recordings / "v3.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 60.0, (160, 210))
    for shade in range(0, 250, 10):
        writer.write(np.full((210, 160, 3), shade, np.uint8))
    writer.release()
    index = {"checkpoint_version": 3, "return": 7.0, "frames": 1234, "path": str(recordings / "v3.mp4"), "unix_ms": 1}
    (recordings / "index.jsonl").write_text(json.dumps(index) + "\n")
    settings = replace(
        DashboardSettings(),
        port=0,
        gateways=(f"127.0.0.1:{free_port()}",),
        learner_address=f"127.0.0.1:{free_port()}",
        recordings_dir=str(recordings),
    )
    dashboard = Dashboard(settings)
    http, port = create_server(settings, dashboard)
    dashboard.start()
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "dir": recordings}
    finally:
        dashboard.stop()
        http.shutdown()
        http.server_close()


@pytest.fixture(scope="module")
def counter_page(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A dashboard of a gateway on the test ROM whose profile pays for holding A (tests/fixtures/gbrom)."""
    path = Path(__file__).resolve().parents[1] / "fixtures" / "gbrom" / "counter_gateway.py"
    fixture = load_file("counter_gateway", path)
    with fixture.watched_counter_gateway(tmp_path_factory.mktemp("counter")) as addresses:
        yield addresses


def profile_table(driver) -> dict[str, Any] | None:
    return driver.execute_script(
        "const table = document.getElementById('gw-0-profile');"
        "if (table === null || table.closest('.profile').hidden) return null;"
        "const rows = (selector, key) => [...table.querySelectorAll(selector)].map((tr) => ["
        "  tr.dataset[key], [...tr.cells].map((td) => td.textContent), [...tr.cells].map((td) => td.dataset.value)]);"
        "return {variables: rows('tr[data-variable]', 'variable'), terms: rows('tr[data-term]', 'term'),"
        " end: document.getElementById('gw-0-episode-end').textContent};"
    )


def test_the_page_shows_a_profile_games_variables_and_reward_terms_live(counter_page, browser):
    browser.get(counter_page["url"])
    table = wait_until(
        lambda: (t := profile_table(browser)) and "time_cap" in t["end"] and t, 30, "the profile table and an end"
    )
    assert [name for name, _, _ in table["variables"]] == ["buttons", "counter", "game_over"]
    assert [name for name, _, _ in table["terms"]] == ["delta(counter)"]
    assert table["end"] == "last episode ended by time_cap"
    shown = {name: cells for name, cells, _ in table["variables"]}
    assert shown["buttons"][2] == "1" and shown["game_over"][2] == "0"  # the fallback holds A, no START
    values = {name: float(data[2]) for name, _, data in table["variables"]}
    [(_, cells, data)] = table["terms"]
    # The term pays 0.5 per counted frame: the episode's column is half the counter (up to one frame of race).
    assert abs(float(data[3]) - 0.5 * values["counter"]) <= 0.5, (cells, values)
    counters = {values["counter"]}
    deadline = time.monotonic() + 10
    while len(counters) < 3:
        assert time.monotonic() < deadline, f"the counter on the page did not change: {counters}"
        time.sleep(0.3)
        counters.add(float(dict((n, d) for n, _, d in profile_table(browser)["variables"])["counter"][2]))
    assert severe_console_entries(browser) == []


def recording_link(driver) -> dict[str, Any] | None:
    return driver.execute_script(
        "const a = document.getElementById('recording-link');"
        "return a === null ? null : {name: a.textContent, href: a.getAttribute('href'),"
        " text: document.getElementById('recording').textContent, version: a.dataset.version};"
    )


def test_the_page_links_the_newest_recording_with_its_version_and_greedy_return(recordings_page, browser):
    browser.get(recordings_page["url"])
    link = wait_until(lambda: recording_link(browser), 20, "the recording link")
    assert link["name"] == "v3.mp4" and link["version"] == "v3"
    assert "checkpoint v3 · greedy return 7.0 · 1,234 frames" in link["text"], link["text"]
    # The browser fetches what the link points at: the video file, whole.
    fetched = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('recording-link').href)"
        ".then((r) => r.arrayBuffer().then((b) => done([r.status, r.headers.get('content-type'), b.byteLength])));"
    )
    assert fetched == [200, "video/mp4", (recordings_page["dir"] / "v3.mp4").stat().st_size]

    # A newer recording replaces the link while the page is open.
    newer = recordings_page["dir"] / "v5.gif"
    newer.write_bytes(b"GIF89a")
    os.utime(newer, (time.time() + 5, time.time() + 5))

    def newer_shown() -> dict[str, Any] | None:
        link = recording_link(browser)
        return link if link is not None and link["name"] == "v5.gif" else None

    link = wait_until(newer_shown, 20, "the newer recording")
    assert link["href"] == "/recordings/latest?name=v5.gif" and link["version"] == ""
    assert severe_console_entries(browser) == []


def get_stats(gateway) -> env_gateway_pb2.GetStatsResponse:
    return gateway.GetStats(env_gateway_pb2.GetStatsRequest(), timeout=5)


def severe_console_entries(driver) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def frame_data_url(driver) -> tuple[int, str]:
    return tuple(  # type: ignore[return-value]
        driver.execute_script(
            "const c = document.getElementById('gw-0-canvas');"
            # The page builds a gateway's view when its first stats arrive: until then, no frame yet.
            "if (c === null) return [-1, ''];"
            "return [Number(c.dataset.frameIndex || -1), c.toDataURL('image/png')];"
        )
    )


def test_the_page_loads_without_console_errors_and_the_game_view_moves(stack, browser):
    browser.get(stack["url"])
    wait_until(lambda: frame_data_url(browser)[0] >= 0, 20, "the first game frame on the page")
    first_index, first_pixels = frame_data_url(browser)
    time.sleep(1.5)
    second_index, second_pixels = frame_data_url(browser)
    # 1.5 s at 60 fps is about 90 frames later (every 4th is shown), and the ball has moved.
    assert second_index >= first_index + 40, (first_index, second_index)
    assert second_pixels != first_pixels, "the game view did not change in 1.5 s"
    assert browser.find_element("id", "connection").text == "live"
    action = browser.find_element("id", "gw-0-action").text
    assert action in {"NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"}
    assert browser.find_element("id", "gw-0-action-kind").text in {"fresh", "fallback"}
    # Everything the page loaded came from the dashboard itself (no CDN, nothing elsewhere).
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(name.startswith(stack["url"]) for name in resources if not name.startswith("data:"))
    assert severe_console_entries(browser) == []


def test_coverage_and_versions_on_the_page_match_get_stats(stack, browser, stubs):
    gateway, learner = stubs
    # Checkpoints are published every 20 updates; wait until the replicas serve a trained one.
    wait_until(
        lambda: all(r.checkpoint_version >= 1 for r in get_stats(gateway).replicas), 120, "replicas serving v1 or newer"
    )
    if browser.current_url != stack["url"]:
        browser.get(stack["url"])
    wait_until(lambda: browser.find_elements("css selector", "#replicas tbody tr"), 20, "the replica table")
    before = get_stats(gateway)
    learner_before = learner.GetStatus(learner_pb2.LearnerServiceGetStatusRequest(), timeout=5)
    # The page shows a poll at most 1 / refresh_hz old when read; one second after `before` it shows a later one.
    time.sleep(1.0)
    page = browser.execute_script(
        """
        const coverage = document.getElementById('gw-0-coverage');
        return {
          coverageText: coverage.textContent,
          coverage: Number(coverage.dataset.coverage),
          decisions: Number(coverage.dataset.decisions),
          fresh: Number(coverage.dataset.fresh),
          learnerVersion: document.getElementById('learner-version').textContent,
          replicas: [...document.querySelectorAll('#replicas tbody tr')].map((tr) => [
            tr.dataset.replica, Number(tr.querySelector('.gateway-version').dataset.version)]),
          openStreams: [...document.querySelectorAll('#replicas .open-streams')].map((td) => td.dataset.open),
          streamsText: [...document.querySelectorAll('#replicas .open-streams')].map((td) => td.textContent),
        };
        """
    )
    after = get_stats(gateway)
    learner_after = learner.GetStatus(learner_pb2.LearnerServiceGetStatusRequest(), timeout=5)

    assert before.decisions <= page["decisions"] <= after.decisions
    assert before.decisions_fresh <= page["fresh"] <= after.decisions_fresh
    assert page["coverage"] == pytest.approx(page["fresh"] / page["decisions"])
    assert page["coverageText"].startswith(f"{100 * page['coverage']:.2f}%"), page["coverageText"]
    assert (
        min(before.coverage, after.coverage) - 0.01 <= page["coverage"] <= max(before.coverage, after.coverage) + 0.01
    )

    versions_before = {r.address: r.checkpoint_version for r in before.replicas}
    versions_after = {r.address: r.checkpoint_version for r in after.replicas}
    shown = dict(page["replicas"])
    assert set(shown) == set(versions_before) == set(versions_after), "every replica the gateway calls is listed"
    for address, version in shown.items():
        assert versions_before[address] <= version <= versions_after[address], (address, version)
    # The one gateway asks each replica on one stream, its act socket, and the page shows the replica's
    # own count and how the gateway asks it.
    assert page["openStreams"] == ["1"] * len(shown), page["openStreams"]
    assert all(text.endswith(" · act socket") for text in page["streamsText"]), page["streamsText"]
    shown_learner = int(page["learnerVersion"].split()[0].lstrip("v"))
    assert learner_before.checkpoint_version <= shown_learner <= learner_after.checkpoint_version

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    time.sleep(2.0)  # a few more chart points
    png = full_page_png(browser)
    (ARTIFACTS / "dashboard.png").write_bytes(png)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 1500 and image.shape[0] > 900
    assert severe_console_entries(browser) == []


def test_the_json_api_and_frames_answer_and_unknown_paths_say_what_exists(stack):
    status, body = http_get(stack["url"] + "api/state")
    assert status == 200
    state = json.loads(body)
    assert state["settings"]["refresh_hz"] >= 5
    assert len(state["history"]) > 10
    [gateway] = state["state"]["gateways"]
    assert gateway["spec"]["env_id"] == "ale:Pong" and gateway["stats"]["frames"] > 0
    assert state["state"]["learner"]["status"]["algorithm"] == "dqn"
    assert len(state["state"]["replicas"]) == 2 and all(r["status"] for r in state["state"]["replicas"])

    status, body = http_get(stack["url"] + "api/frame/0.png")
    assert status == 200
    frame = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape == (210, 160, 3)

    status, body = http_get(stack["url"] + "api/frame/3.png")
    assert status == 404 and b"ask for 0 to 0" in body
    status, body = http_get(stack["url"] + "nothing-here")
    assert status == 404 and b"open /" in body


def test_the_event_stream_delivers_states_at_the_refresh_rate_and_frames(stack):
    events: dict[str, int] = {"state": 0, "frame": 0}
    started = time.monotonic()
    with urllib.request.urlopen(stack["url"] + "api/events", timeout=5) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        while time.monotonic() - started < 3.0:
            line = response.readline().decode()
            if line.startswith("event: "):
                events[line.removeprefix("event: ").strip()] += 1
    elapsed = time.monotonic() - started
    assert events["state"] / elapsed >= 4.0, events  # 5 Hz, less a late poll on a busy machine
    assert events["frame"] / elapsed >= 8.0, events  # 15 shown frames a second
