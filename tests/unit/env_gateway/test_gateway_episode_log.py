"""The episode log: one JSON line per episode, written off the clock's thread, whole lines while the run goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gateway_fakes import wait_for

from rtrl.config import SettingsError
from rtrl.services.env_gateway.episodes import EpisodeEnd, EpisodeLog


def episode(index: int) -> EpisodeEnd:
    return EpisodeEnd(
        "gw-a", index, float(index) * 1.5, 10 + index, 3, 2, index % 2 == 0, index % 2 == 1, 100 * index, 7
    )


def test_episodes_are_appended_as_json_lines_readable_while_the_log_is_open(tmp_path: Path) -> None:
    path = tmp_path / "run" / "episodes.jsonl"
    log = EpisodeLog(path)
    for index in range(3):
        log.record(episode(index))
    try:
        assert wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 3)
    finally:
        log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["episode"] for line in lines] == [0, 1, 2]
    assert lines[2] == {
        "gateway_id": "gw-a",
        "episode": 2,
        "episode_return": 3.0,
        "frames": 12,
        "decisions": 3,
        "decisions_fresh": 2,
        "terminated": True,
        "truncated": False,
        "end_frame": 200,
        "end_unix_ms": 7,
    }
    assert log.written == 3


def test_a_second_log_appends_to_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    for index in range(2):
        log = EpisodeLog(path)
        log.record(episode(index))
        log.close()
    assert len(path.read_text().splitlines()) == 2


def test_a_log_that_cannot_be_written_fails_the_start_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match=r"RTRL_GATEWAY_EPISODE_LOG=.* cannot be written"):
        EpisodeLog(blocker / "episodes.jsonl")
