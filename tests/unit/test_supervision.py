"""The restart policy of `rtrl up` (rtrl/supervision.py), on a clock the test moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtrl.supervision import (
    BACKOFF_CAP_S,
    CRASH_WINDOW_S,
    MAX_FAILED_STARTS,
    Supervisor,
    backoff_s,
    read_supervision,
    supervision_text,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_is_immediate_then_doubles_up_to_the_cap() -> None:
    assert [backoff_s(n) for n in range(1, 6)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff_s(50) == BACKOFF_CAP_S


def test_a_service_that_keeps_dying_after_becoming_ready_is_restarted_ever_later() -> None:
    clock = Clock()
    supervisor = Supervisor("on-failure", clock)
    delays = []
    for _ in range(4):
        decision = supervisor.exited("inference-0", -9, was_ready=True)
        assert not decision.give_up
        delays.append(decision.delay_s)
        supervisor.restarted("inference-0")
        clock.now += 5
        supervisor.ready("inference-0")
    assert delays == [0.0, 1.0, 2.0, 4.0]
    record = supervisor.records["inference-0"]
    assert record.restarts == 4 and record.state == "running" and record.last_exit_code == -9
    assert record.last_down_s == pytest.approx(5.0)


def test_exits_older_than_the_window_no_longer_lengthen_the_backoff() -> None:
    clock = Clock()
    supervisor = Supervisor("on-failure", clock)
    supervisor.exited("learner", 1, was_ready=True)
    clock.now += CRASH_WINDOW_S + 1
    assert supervisor.exited("learner", 1, was_ready=True).delay_s == 0.0


def test_failing_at_start_several_times_in_a_row_gives_up_but_a_ready_start_resets_the_count() -> None:
    supervisor = Supervisor("on-failure", Clock())
    supervisor.exited("gateway", 1, was_ready=True)
    for _ in range(MAX_FAILED_STARTS - 1):
        assert not supervisor.exited("gateway", 2, was_ready=False).give_up
    supervisor.ready("gateway")  # the last restart came up after all
    for _ in range(MAX_FAILED_STARTS - 1):
        assert not supervisor.exited("gateway", 2, was_ready=False).give_up
    decision = supervisor.exited("gateway", 2, was_ready=False)
    assert decision.give_up and "before it became ready" in decision.reason
    assert supervisor.records["gateway"].state == "failed"


def test_policy_never_gives_up_at_the_first_exit() -> None:
    decision = Supervisor("never", Clock()).exited("learner", -9, was_ready=True)
    assert decision.give_up and "never" in decision.reason


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="on-failure"):
        Supervisor("always")


def test_the_written_records_read_back_as_one_line(tmp_path: Path) -> None:
    clock = Clock()
    supervisor = Supervisor("on-failure", clock)
    supervisor.ready("learner")
    assert supervision_text(supervisor.to_json()) == ""  # nothing restarted: nothing to say
    supervisor.exited("inference-1", -9, was_ready=True)
    supervisor.restarted("inference-1")
    clock.now += 1.5
    supervisor.ready("inference-1")
    path = tmp_path / "supervision.json"
    supervisor.write(path)
    text = supervision_text(read_supervision(path))
    assert text == "restarts: inference-1 1x (last exit code -9, back in 1.5 s)"
    supervisor.exited("learner", 1, was_ready=True)
    assert "learner 0x (last exit code 1) waiting" in supervision_text(supervisor.to_json())


def test_unreadable_records_are_none(tmp_path: Path) -> None:
    assert read_supervision(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_supervision(tmp_path / "bad.json") is None
