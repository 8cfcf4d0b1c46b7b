"""The clock's decision semantics, driven frame by frame on a scripted backend (k=4, L=1, S=5 unless set).

Frame timeline of the first episode with the defaults: frame 0 is the reset and step 0's
observation; step j starts at frame 4j + 1 and its observation is frame 4j.
"""

from __future__ import annotations

import math

import pytest
from gateway_fakes import FakeBackend, MakeHarness

from rtrl.services.env_gateway.clock import DEADLINE_MARGIN_S
from rtrl.services.env_gateway.episodes import EpisodeEnd
from rtrl.services.env_gateway.settings import FallbackPolicy


def test_fallback_action_is_applied_when_no_reply_arrives(make_clock: MakeHarness) -> None:
    h = make_clock(fallback_action=2)
    h.tick_until(12)
    assert h.backend.applied == [2] * 12
    assert h.clock.decisions == 3
    assert h.clock.decisions_fallback == 3
    assert h.clock.coverage == 0.0
    assert [(r.fresh, r.policy_version, r.staleness_frames, r.behaviour_log_prob) for r in h.records] == [
        (False, -1, 0, 0.0)
    ] * 3
    assert len(h.clock.staleness_frames) == 0


def test_reply_in_time_becomes_the_next_steps_action(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.tick_until(0)
    assert h.reply(0, action=3, version=9, log_prob=-0.5)
    h.tick_until(8)
    # Frames 1..4 run step 0 with the reply; step 1 (frames 5..8) had no reply.
    assert h.backend.applied == [3, 3, 3, 3, 0, 0, 0, 0]
    first, second = h.records
    assert (first.fresh, first.action, first.staleness_frames, first.policy_version) == (True, 3, 1, 9)
    assert first.behaviour_log_prob == -0.5
    assert first.action_applied_unix_ns > 0
    assert (second.fresh, second.action) == (False, 0)
    assert list(h.clock.staleness_frames.values()) == [1]
    assert h.clock.coverage == 0.5


def test_newest_reply_is_chosen_and_older_pending_ones_are_superseded(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.tick_until(1)  # step 0 already started on the fallback
    assert h.reply(0, action=3)  # staleness at frame 5 would be 5 <= S, so it is kept
    h.tick_until(4)
    assert h.reply(4, action=1)
    h.tick_until(5)
    assert h.backend.applied[-1] == 1
    assert h.clock.mailbox.replies_superseded == 1
    assert h.clock.mailbox.replies_late == 0
    assert list(h.clock.staleness_frames.values()) == [1]


def test_reply_that_missed_its_step_is_used_by_the_next_while_within_staleness(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.tick_until(1)
    assert h.reply(0, action=3)
    h.tick_until(8)
    assert h.backend.applied == [0, 0, 0, 0, 3, 3, 3, 3]
    assert h.records[1].staleness_frames == 5
    assert h.records[1].obs_frame == 4  # the transition keeps the step's own observation


def test_reply_staler_than_max_staleness_is_counted_late_and_dropped(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.tick_until(5)
    # The earliest frame it could start is 6, six frames after its observation: too stale.
    assert not h.reply(0, action=3)
    h.tick_until(9)
    assert h.clock.mailbox.replies_late == 1
    assert 3 not in h.backend.applied
    assert h.clock.decisions_fresh == 0


def test_pending_reply_that_cannot_reach_a_step_boundary_in_time_is_counted_late(make_clock: MakeHarness) -> None:
    h = make_clock(max_staleness_frames=2)
    h.tick_until(1)
    assert h.reply(0, action=3)  # usable at frame 2, but no step starts before frame 5
    h.tick_until(5)
    assert h.clock.mailbox.replies_late == 1
    assert h.clock.decisions_fresh == 0


def test_replies_from_a_previous_episode_are_dropped(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.backend.terminate_at = {2}  # frame 3 ends episode 0; frame 4 resets
    h.tick_until(1)
    assert h.reply(0, action=3)  # pending when the episode ends
    h.tick_until(4)
    assert h.clock.episode == 1
    assert h.clock.mailbox.replies_late == 1
    assert not h.reply(0, action=3)  # arrives after the new episode began
    assert h.clock.mailbox.replies_late == 2
    h.tick_until(5)
    assert h.backend.applied == [0, 0, 0, 0]
    assert h.clock.decisions_fresh == 0


def test_repeat_last_fallback_repeats_the_last_applied_action(make_clock: MakeHarness) -> None:
    h = make_clock(fallback_policy=FallbackPolicy.REPEAT_LAST, fallback_action=1)
    h.tick_until(0)
    h.reply(0, action=3)
    h.tick_until(12)
    assert h.backend.applied == [3] * 12
    assert [(r.fresh, r.action, r.behaviour_log_prob, r.policy_version) for r in h.records[1:]] == [
        (False, 3, 0.0, -1)
    ] * 2
    assert {r.fallback_policy for r in h.records} == {int(FallbackPolicy.REPEAT_LAST)}


def test_repeat_last_starts_each_episode_from_the_fallback_action(make_clock: MakeHarness) -> None:
    h = make_clock(fallback_policy=FallbackPolicy.REPEAT_LAST, fallback_action=1)
    h.backend.terminate_at = {3}  # frame 4 ends episode 0, frame 5 resets
    h.tick_until(0)
    h.reply(0, action=3)
    h.tick_until(9)
    assert h.backend.applied == [3, 3, 3, 3, 1, 1, 1, 1]


def test_random_fallback_draws_actions_in_range_with_uniform_log_prob(make_clock: MakeHarness) -> None:
    h = make_clock(fallback_policy=FallbackPolicy.RANDOM)
    h.tick_until(4 * 40)
    actions = {r.action for r in h.records}
    assert actions <= set(range(4))
    assert len(actions) > 1
    assert all(r.behaviour_log_prob == pytest.approx(-math.log(4)) for r in h.records)


def test_reward_is_summed_over_the_steps_frames(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.backend.rewards = {0: 1.0, 3: 2.0, 4: 5.0}  # frames 1 and 4 are step 0, frame 5 is step 1
    h.tick_until(8)
    assert [r.reward for r in h.records] == [3.0, 5.0]


def test_termination_ends_the_step_early_and_a_new_episode_starts(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.backend.rewards = {4: 1.0, 5: 2.0}
    h.backend.terminate_at = {5}  # frame 6, the second frame of step 1
    h.tick_until(15)
    ended = h.records[1]
    assert (ended.episode, ended.step, ended.terminated, ended.truncated, ended.reward) == (0, 1, True, False, 3.0)
    assert h.backend.resets == [3, None]  # the seed only for the first episode
    assert h.clock.episodes == 1
    assert h.clock.last_episode_return == 3.0
    # Episode 1 starts at frame 7: observations at 7 and 11, steps from frames 8 and 12.
    assert [(r.episode, r.step, r.obs_frame) for r in h.records[2:]] == [(1, 0, 7), (1, 1, 11)]
    assert [r.seq for r in h.records] == list(range(len(h.records)))


def test_each_finished_episode_is_reported_with_its_return_length_decisions_and_end(make_clock: MakeHarness) -> None:
    h = make_clock(max_episode_frames=12)
    ended: list[EpisodeEnd] = []
    h.clock.on_episode_end = ended.append
    h.backend.rewards = {4: 1.0, 5: 2.0}
    h.backend.terminate_at = {5}  # frame 6 ends episode 0
    h.tick_until(7)  # nothing answers episode 0; episode 1 resets at frame 7, its first observation
    h.reply(7, 3)
    h.tick_until(19)  # episode 1 (frames 7..18) is truncated at 12 frames

    assert [(e.episode, e.episode_return, e.frames, e.end_frame) for e in ended] == [(0, 3.0, 7, 6), (1, 0.0, 12, 18)]
    assert [(e.terminated, e.truncated) for e in ended] == [(True, False), (False, True)]
    # Episode 0: steps from frames 1 and 5, both fallback; episode 1: steps from 8, 12 and 16, the first fresh.
    assert [(e.decisions, e.decisions_fresh) for e in ended] == [(2, 0), (3, 1)]
    assert all(e.gateway_id == "gw-test" for e in ended)


def test_max_episode_frames_truncates_the_running_step(make_clock: MakeHarness) -> None:
    h = make_clock(max_episode_frames=10)
    h.tick_until(10)
    last = h.records[-1]
    assert (last.step, last.truncated, last.terminated) == (2, True, False)
    assert h.clock.episode == 1
    assert h.clock.episode_frames == 1  # the reset frame of episode 1


def test_backend_truncation_is_recorded(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.backend.truncate_at = {1}
    h.tick_until(2)
    assert [(r.truncated, r.terminated) for r in h.records] == [(True, False)]


def test_no_transition_is_created_for_a_step_that_never_ran(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.backend.terminate_at = {3}  # frame 4 is both step 1's observation and the end of the episode
    h.tick_until(4)
    assert [r.step for r in h.records] == [0]
    assert 4 not in [s.frame_index for s in h.samples]  # nobody is asked about a terminal frame


def test_observations_stack_the_last_sampled_frames_and_restart_each_episode(make_clock: MakeHarness) -> None:
    h = make_clock(frame_stack=4)
    h.backend.terminate_at = {8}  # frame 9 ends episode 0, frame 10 resets
    h.tick_until(14)
    stacks = [[f.frame_index for f in s.frames] for s in h.samples]
    assert stacks == [[0, 0, 0, 0], [0, 0, 0, 4], [0, 0, 4, 8], [10, 10, 10, 10], [10, 10, 10, 14]]
    assert [(s.episode, s.step) for s in h.samples] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]


def test_request_deadline_is_the_due_time_of_the_last_usable_frame(make_clock: MakeHarness) -> None:
    h = make_clock()
    start_s = h.time.now_s
    h.tick_until(4)
    assert h.sample_at(4).deadline_s == pytest.approx(start_s + (4 + 5) / 60.0 - DEADLINE_MARGIN_S)


def test_quiet_moments_are_the_middles_of_frame_periods(make_clock: MakeHarness) -> None:
    h = make_clock()
    assert h.clock.quiet_after(5.0) == 5.0  # no schedule before the first frame
    start_s = h.time.now_s
    h.tick_until(2)
    period_s = 1.0 / 60.0
    assert h.clock.quiet_after(start_s) == pytest.approx(start_s + 0.5 * period_s)
    assert h.clock.quiet_after(start_s + 0.49 * period_s) == pytest.approx(start_s + 0.5 * period_s)
    assert h.clock.quiet_after(start_s + 0.51 * period_s) == pytest.approx(start_s + 1.5 * period_s)
    assert h.clock.quiet_after(start_s + 3.2 * period_s) == pytest.approx(start_s + 3.5 * period_s)


def test_decision_overhead_runs_from_frame_produced_to_reply_in_mailbox(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.tick_until(0)
    h.time.advance(0.003)
    h.reply(0, action=1)
    assert list(h.clock.mailbox.decision_overhead_ms.values()) == pytest.approx([3.0])


def test_longer_lead_applies_the_fallback_before_the_first_step(make_clock: MakeHarness) -> None:
    h = make_clock(lead_frames=3, fallback_action=2)
    h.tick_until(0)
    h.reply(0, action=1)
    h.tick_until(6)
    # Frames 1 and 2 are lead frames; step 0 runs from frame 3.
    assert h.backend.applied == [2, 2, 1, 1, 1, 1]
    assert h.clock.decisions == 1
    assert h.records[0].staleness_frames == 3


def test_lead_follows_the_schedulers_round_trip_from_one_episode_to_the_next(make_clock: MakeHarness) -> None:
    suggested: list[int | None] = [None]
    backend = FakeBackend()
    backend.terminate_at = {4, 9}  # step calls 4 and 9 end episodes 0 and 1
    h = make_clock(
        decision_interval_frames=1, lead_frames=1, max_staleness_frames=4, backend=backend,
        lead_for_episode=lambda: suggested[0],
    )  # fmt: skip
    h.tick_until(0)
    assert h.clock.lead_frames == 1  # nothing measured yet: the configured lead
    suggested[0] = 3
    h.tick_until(5)  # frame 5 ended episode 0
    assert h.clock.lead_frames == 1  # an episode keeps its lead
    h.tick_until(6)  # episode 1 starts at frame 6
    assert h.clock.lead_frames == 3
    first = h.sample_at(6)
    assert first.deadline_s == pytest.approx(h.clock.due_s(6 + 4) - DEADLINE_MARGIN_S)
    assert h.reply(6, action=2)
    h.tick_until(9)  # frames 7 and 8 are lead frames; step 0 starts at frame 9 with the reply to frame 6
    assert h.backend.applied[-3:] == [0, 0, 2]
    suggested[0] = 50
    h.tick_until(12)  # frame 11 ended episode 1; episode 2 starts at frame 12
    assert h.clock.lead_frames == 4  # never beyond S, where no reply could be applied
    record = next(r for r in h.records if r.episode == 1 and r.fresh)
    assert (record.obs_frame, record.action_obs_frame, record.staleness_frames) == (6, 6, 3)


def test_viewer_frames_report_each_frame_with_its_action(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.tick_until(0)
    h.reply(0, action=3)
    h.tick_until(5)
    assert [f.frame_index for f in h.frames] == list(range(6))
    assert [(f.action, f.fresh) for f in h.frames] == [(0, False)] + [(3, True)] * 4 + [(0, False)]
    assert h.frames[2].rgb[0, 0, 0] == 2


def test_finishing_mid_step_publishes_the_step_as_truncated(make_clock: MakeHarness) -> None:
    h = make_clock()
    h.tick_until(0)
    assert h.reply(0, action=3)
    h.tick_until(6)  # step 0 ran frames 1..4; step 1 started at frame 5 and is in progress
    assert len(h.records) == 1 and h.clock.decisions == 2
    h.clock.finish()
    assert len(h.records) == h.clock.decisions == 2
    last = h.records[-1]
    assert (last.step, last.truncated, last.terminated, last.seq) == (1, True, False, 1)
    h.clock.finish()
    assert len(h.records) == 2, "finishing twice publishes nothing more"


def test_frame_rate_after_stop_is_measured_up_to_the_stop(make_clock: MakeHarness) -> None:
    h = make_clock()
    for _ in range(120):  # 2 s of frames at 60 fps on the fake clock
        h.clock.tick()
        h.time.advance(1 / 60)
    running = h.clock.frame_rate_hz()
    assert running == pytest.approx(60.0, rel=0.02)
    h.clock.stop()
    h.time.advance(0.5)  # the final stats are read a while after the stop
    assert h.clock.frame_rate_hz() == pytest.approx(running, rel=1e-6)
    assert h.clock.frame_rate.rate(h.time()) < 0.9 * running  # what the reading was before the fix
