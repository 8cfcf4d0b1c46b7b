"""Fixtures for the gateway's unit tests: a clock on a scripted backend, driven frame by frame."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gateway_fakes import FakeBackend, FakeTime, Harness, MakeHarness

from rtrl.services.env_gateway.clock import ClockConfig, ObservationSample, RealtimeClock, StepRecord, ViewerFrame
from rtrl.services.env_gateway.settings import FallbackPolicy


@pytest.fixture
def make_clock() -> MakeHarness:
    def make(
        decision_interval_frames: int = 4,
        lead_frames: int = 1,
        max_staleness_frames: int | None = None,
        fallback_policy: FallbackPolicy = FallbackPolicy.NOOP,
        fallback_action: int = 0,
        frame_stack: int = 4,
        max_episode_frames: int = 0,
        backend: FakeBackend | None = None,
        lead_for_episode: Callable[[], int | None] | None = None,
    ) -> Harness:
        backend = backend or FakeBackend()
        config = ClockConfig(
            gateway_id="gw-test",
            frame_rate_hz=60.0,
            decision_interval_frames=decision_interval_frames,
            lead_frames=lead_frames,
            max_staleness_frames=(
                lead_frames + decision_interval_frames if max_staleness_frames is None else max_staleness_frames
            ),
            fallback_policy=fallback_policy,
            fallback_action=fallback_action,
            frame_stack=frame_stack,
            max_episode_frames=max_episode_frames,
            seed=3,
        )
        fake_time = FakeTime()
        samples: list[ObservationSample] = []
        records: list[StepRecord] = []
        frames: list[ViewerFrame] = []

        def publish(record: StepRecord) -> bool:
            records.append(record)
            return True

        clock = RealtimeClock(
            backend,
            config,
            dispatch=samples.append,
            publish=publish,
            show_frame=frames.append,
            lead_for_episode=lead_for_episode,
            now_s=fake_time,
            wall_ns=lambda: int(fake_time.now_s * 1e9),
        )
        return Harness(clock, backend, fake_time, samples, records, frames)

    return make
