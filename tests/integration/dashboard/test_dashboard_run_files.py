"""What the dashboard shows from the files of an `rtrl up` run, over HTTP, with nothing else running.

The newest recording (RTRL_DASHBOARD_RECORDINGS_DIR): the newest file of the directory is served at
/recordings/latest and described in /api/state from index.jsonl; files being written, links and anything
outside the directory are never served. The restarts (RTRL_DASHBOARD_SUPERVISION_FILE): /api/state says
which services `rtrl up` restarted, as the run's supervision.json records them."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rtrl.local_redis import free_port
from rtrl.services.dashboard.server import Dashboard, create_server
from rtrl.services.dashboard.settings import DashboardSettings
from rtrl.supervision import Supervisor

DashboardFactory = Callable[..., str]


@pytest.fixture
def dashboard() -> Iterator[DashboardFactory]:
    """Starts a dashboard watching nothing that answers, with the given run files; returns its URL."""
    running: list[tuple[Dashboard, Any]] = []

    def start(recordings: Path | None, supervision_file: Path | None = None) -> str:
        settings = replace(
            DashboardSettings(),
            port=0,
            gateways=(f"127.0.0.1:{free_port()}",),
            learner_address=f"127.0.0.1:{free_port()}",
            recordings_dir=str(recordings) if recordings is not None else "",
            supervision_file=str(supervision_file) if supervision_file is not None else "",
        )
        board = Dashboard(settings)
        http, port = create_server(settings, board)
        board.start()
        threading.Thread(target=http.serve_forever, daemon=True).start()
        running.append((board, http))
        return f"http://127.0.0.1:{port}"

    yield start
    for board, http in running:
        board.stop()
        http.shutdown()
        http.server_close()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def recordings_state(url: str) -> dict[str, Any]:
    return json.loads(get(url + "/api/state")[2])["state"]["recordings"]


def write(path: Path, data: bytes, mtime_s: float) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime_s, mtime_s))


def test_the_newest_recording_is_served_and_described_from_the_index(tmp_path, dashboard):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    write(recordings / "v1.mp4", b"older video", 1_000_000)
    write(recordings / "v2.gif", b"GIF89a newest", 2_000_000)
    index = [
        {"checkpoint_version": 1, "return": -21.0, "frames": 3000, "path": str(recordings / "v1.mp4"), "unix_ms": 1},
        {"checkpoint_version": 2, "return": -19.5, "frames": 3100, "path": str(recordings / "v2.gif"), "unix_ms": 2},
    ]
    (recordings / "index.jsonl").write_text("".join(json.dumps(line) + "\n" for line in index))
    url = dashboard(recordings)

    status, headers, body = get(url + "/recordings/latest")
    assert status == 200 and body == b"GIF89a newest"
    assert headers["Content-Type"] == "image/gif" and headers["Content-Length"] == str(len(body))
    assert headers["Content-Disposition"] == 'inline; filename="v2.gif"'  # browsers show GIFs
    state = recordings_state(url)
    assert state["enabled"] is True
    latest = state["latest"]
    assert (latest["name"], latest["checkpoint_version"], latest["return"], latest["frames"]) == (
        "v2.gif",
        2,
        -19.5,
        3100,
    )
    assert latest["url"] == "/recordings/latest?name=v2.gif"
    # The page's link, cache-busting query included, serves the same file.
    assert get(url + latest["url"])[2] == b"GIF89a newest"


def test_a_file_being_written_a_link_and_an_index_path_outside_are_never_served(tmp_path, dashboard):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    secret = tmp_path / "secret.mp4"
    write(secret, b"not a recording", 4_000_000)
    write(recordings / "v1.mp4", b"the recording", 1_000_000)
    write(recordings / ".v2.123-abcd.partial.mp4", b"half a video", 2_000_000)  # rtrl play still writing
    (recordings / "v3.mp4").symlink_to(secret)  # newest by its target's time, and outside the directory
    (recordings / "index.jsonl").write_text(json.dumps({"checkpoint_version": 9, "path": str(secret)}) + "\n")
    url = dashboard(recordings)

    status, headers, body = get(url + "/recordings/latest")
    assert status == 200 and body == b"the recording"
    # Browsers cannot decode mp4v: the file is downloaded for a video player.
    assert headers["Content-Type"] == "video/mp4" and headers["Content-Disposition"].startswith("attachment;")
    assert recordings_state(url)["latest"]["name"] == "v1.mp4"
    assert recordings_state(url)["latest"]["checkpoint_version"] is None  # the index says nothing about v1.mp4
    for path in ("/recordings/../secret.mp4", "/recordings/latest/../../secret.mp4", "/recordings/%2e%2e/secret.mp4"):
        status, _, body = get(url + path)
        assert status == 404 and b"not a page of the rtrl dashboard" in body, path


def test_with_only_a_link_or_nothing_there_is_no_recording_to_serve(tmp_path, dashboard):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    (recordings / "v1.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    (tmp_path / "elsewhere.mp4").write_bytes(b"outside")
    url = dashboard(recordings)
    status, _, body = get(url + "/recordings/latest")
    assert status == 404 and f"no recording in {recordings.resolve()} yet".encode() in body
    assert recordings_state(url) == {"enabled": True, "latest": None}

    not_yet = dashboard(tmp_path / "not-created-yet")
    assert get(not_yet + "/recordings/latest")[0] == 404


def test_without_a_recordings_directory_the_page_has_no_recordings(dashboard):
    url = dashboard(None)
    status, _, body = get(url + "/recordings/latest")
    assert status == 404 and b"RTRL_DASHBOARD_RECORDINGS_DIR is set (rtrl up --record-every SECONDS sets it)" in body
    assert recordings_state(url) == {"enabled": False, "latest": None}


def test_the_restarts_recorded_by_rtrl_up_are_on_the_page(tmp_path, dashboard):
    path = tmp_path / "supervision.json"
    url = dashboard(None, path)
    assert json.loads(get(url + "/api/state")[2])["state"]["supervision"] == ""  # no file yet: nothing to say
    supervisor = Supervisor("on-failure")
    supervisor.ready("learner")
    supervisor.exited("inference-0", -9, was_ready=True)
    supervisor.write(path)
    text = json.loads(get(url + "/api/state")[2])["state"]["supervision"]
    assert text == "restarts: inference-0 0x (last exit code -9) waiting"
    supervisor.restarted("inference-0")
    supervisor.ready("inference-0")
    supervisor.write(path)
    text = json.loads(get(url + "/api/state")[2])["state"]["supervision"]
    assert text.startswith("restarts: inference-0 1x (last exit code -9, back in ")
    assert "supervision" not in json.loads(get(dashboard(None) + "/api/state")[2])["state"]
