"""ActionMailbox on its own: which reply a step takes and how the others are counted (S = 5)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from rtrl.services.env_gateway.mailbox import ARRIVAL_MIN, ActionMailbox, ActionReply, PendingReply


def reply(action: int) -> ActionReply:
    return ActionReply(action=action, policy_version=1, behaviour_log_prob=-0.1)


@pytest.fixture
def mailbox() -> ActionMailbox:
    box = ActionMailbox(max_staleness_frames=5, now_s=lambda: 10.0)
    box.begin_episode(episode=0, frame=0)
    return box


def test_empty_mailbox_yields_nothing(mailbox: ActionMailbox) -> None:
    assert mailbox.take(1) is None


def test_newest_usable_reply_wins_and_older_usable_ones_are_superseded(mailbox: ActionMailbox) -> None:
    mailbox.advance(6)
    for obs_frame, action in ((4, 1), (6, 2), (5, 3)):
        assert mailbox.offer(0, obs_frame, 9.99, reply(action))
    taken = mailbox.take(9)
    assert taken is not None
    assert (taken.obs_frame, taken.reply.action) == (6, 2)
    assert mailbox.replies_superseded == 2
    assert mailbox.pending_count() == 0


def test_replies_too_stale_at_the_step_are_late_not_superseded(mailbox: ActionMailbox) -> None:
    mailbox.advance(4)
    mailbox.offer(0, 0, 9.9, reply(1))  # staleness 9 at frame 9
    mailbox.offer(0, 4, 9.9, reply(2))  # staleness 5 at frame 9
    taken = mailbox.take(9)
    assert taken is not None and taken.obs_frame == 4
    assert (mailbox.replies_late, mailbox.replies_superseded) == (1, 0)


def test_arrival_after_the_last_usable_frame_started_is_late(mailbox: ActionMailbox) -> None:
    mailbox.advance(4)
    assert mailbox.offer(0, 0, 9.9, reply(1))  # could still start at frame 5
    mailbox.take(5)
    assert not mailbox.offer(0, 0, 9.9, reply(1))  # earliest now frame 6: staleness 6
    assert mailbox.replies_late == 1


def test_new_episode_drops_pending_replies_and_refuses_old_ones(mailbox: ActionMailbox) -> None:
    mailbox.offer(0, 0, 9.9, reply(1))
    mailbox.begin_episode(episode=1, frame=3)
    assert mailbox.replies_late == 1
    assert not mailbox.offer(0, 0, 9.9, reply(1))
    assert mailbox.replies_late == 2
    assert mailbox.take(4) is None


def test_overhead_is_recorded_for_accepted_replies_only(mailbox: ActionMailbox) -> None:
    mailbox.offer(0, 0, 9.996, reply(1))
    mailbox.offer(7, 0, 9.0, reply(1))  # wrong episode: dropped, not measured
    assert list(mailbox.decision_overhead_ms.values()) == pytest.approx([4.0])


def steady_replies(mailbox: ActionMailbox, count: int, staleness: int) -> int:
    """`count` steps (k = 1) whose replies each arrive during the tick `staleness` - 1 frames after their
    observation, so each is taken at staleness `staleness`; returns the next frame."""
    frame = 1
    for _ in range(count):
        mailbox.advance(frame - 1)
        mailbox.offer(0, frame - staleness, 9.9, reply(1))
        assert mailbox.take(frame) is not None
        frame += 1
    return frame


def test_a_reply_early_because_its_tick_started_late_waits_for_the_next_step() -> None:
    mailbox = ActionMailbox(max_staleness_frames=8, now_s=lambda: 10.0)
    mailbox.begin_episode(episode=0, frame=0)
    frame = steady_replies(mailbox, ARRIVAL_MIN, staleness=5)
    assert mailbox.usual_staleness() == 5
    # Tick `frame` starts late, after the reply meant for the tick after it has arrived as well.
    mailbox.advance(frame - 1)
    mailbox.offer(0, frame - 5, 9.9, reply(1))
    mailbox.offer(0, frame - 4, 9.9, reply(2))
    taken = mailbox.take(frame)
    assert taken is not None and taken.obs_frame == frame - 5
    assert mailbox.pending_count() == 1  # the early one is kept, not superseded
    taken = mailbox.take(frame + 1)  # nothing new arrived in time for this tick: the kept reply serves it
    assert taken is not None and (taken.obs_frame, taken.reply.action) == (frame - 4, 2)
    assert (mailbox.replies_superseded, mailbox.replies_late) == (0, 0)


def test_with_nothing_due_the_newest_early_reply_is_taken() -> None:
    mailbox = ActionMailbox(max_staleness_frames=8, now_s=lambda: 10.0)
    mailbox.begin_episode(episode=0, frame=0)
    frame = steady_replies(mailbox, ARRIVAL_MIN, staleness=5)
    mailbox.advance(frame - 1)
    mailbox.offer(0, frame - 3, 9.9, reply(1))
    mailbox.offer(0, frame - 2, 9.9, reply(2))
    taken = mailbox.take(frame)
    assert taken is not None and taken.obs_frame == frame - 2
    assert (mailbox.replies_superseded, mailbox.pending_count()) == (1, 0)


def test_with_several_frames_per_step_an_early_reply_is_used_at_once() -> None:
    mailbox = ActionMailbox(max_staleness_frames=8, now_s=lambda: 10.0)
    mailbox.begin_episode(episode=0, frame=0)
    frame = steady_replies(mailbox, ARRIVAL_MIN, staleness=3)
    mailbox.advance(frame - 1)
    mailbox.offer(0, frame - 6, 9.9, reply(1))
    mailbox.offer(0, frame - 2, 9.9, reply(2))  # at the next step, 4 frames on, it would be 6 > 3 old
    taken = mailbox.take(frame, interval_frames=4)
    assert taken is not None and taken.obs_frame == frame - 2
    assert (mailbox.replies_superseded, mailbox.pending_count()) == (1, 0)


def test_with_plenty_of_replies_per_step_the_newest_wins_as_always() -> None:
    mailbox = ActionMailbox(max_staleness_frames=8, now_s=lambda: 10.0)
    mailbox.begin_episode(episode=0, frame=0)
    frame = 1
    for _ in range(ARRIVAL_MIN):  # two replies a step (a staggering scheduler resending), taken 2 frames old
        mailbox.advance(frame - 1)
        mailbox.offer(0, frame - 2, 9.9, reply(1))
        mailbox.offer(0, frame - 2, 9.9, reply(1))
        mailbox.take(frame)
        frame += 1
    assert mailbox.usual_staleness() == 0
    mailbox.advance(frame - 1)
    mailbox.offer(0, frame - 2, 9.9, reply(1))
    mailbox.offer(0, frame - 1, 9.9, reply(2))
    taken = mailbox.take(frame)
    assert taken is not None and taken.obs_frame == frame - 1
    assert mailbox.pending_count() == 0


def every_frame(mailbox: ActionMailbox, arrival_staleness: list[int]) -> list[PendingReply | None]:
    """A step every frame; observation o's reply arrives during tick o + arrival_staleness[o] - 1 (so its
    arrival staleness is arrival_staleness[o]). Returns what each tick took, from tick 0."""
    arrivals: dict[int, list[int]] = defaultdict(list)
    for obs_frame, staleness in enumerate(arrival_staleness):
        arrivals[obs_frame + staleness - 1].append(obs_frame)
    taken = []
    for frame in range(len(arrival_staleness) + max(arrival_staleness)):
        taken.append(mailbox.take(frame))
        for obs_frame in arrivals[frame]:
            mailbox.offer(0, obs_frame, 9.9, reply(obs_frame))
    return taken


# Replies about 4.5 frames after their observation; the one to observation 40 comes a frame late.
JITTERED = [5] * 40 + [6] + [5] * 20


def test_without_a_reserve_a_reply_a_frame_late_leaves_its_step_without_an_action() -> None:
    mailbox = ActionMailbox(max_staleness_frames=8, now_s=lambda: 10.0)
    mailbox.begin_episode(episode=0, frame=0)
    taken = every_frame(mailbox, JITTERED)
    assert mailbox.usual_staleness() == 5
    steady = taken[30:61]  # ticks 30..60 apply observations 25..55
    assert [t is None for t in steady].count(True) == 1
    assert taken[45] is None  # observation 40's step
    assert taken[46] is not None and taken[46].obs_frame == 41  # 40 arrived with 41 and is superseded
    assert mailbox.replies_superseded == 1


def test_a_reserve_of_one_frame_lands_the_late_reply_on_its_step_one_frame_staler() -> None:
    mailbox = ActionMailbox(max_staleness_frames=8, now_s=lambda: 10.0, jitter_reserve_frames=1)
    mailbox.begin_episode(episode=0, frame=0)
    taken = every_frame(mailbox, JITTERED)
    assert mailbox.usual_staleness() == 6
    steady = taken[30:61]
    assert all(t is not None for t in steady)
    assert [frame - t.obs_frame for frame, t in enumerate(taken[30:61], start=30) if t is not None] == [6] * 31
    assert mailbox.replies_superseded == 0
    # Going from 5 to 6 frames once cost one step (the reply held back left its own tick empty).
    assert [t is None for t in taken[5:30]].count(True) == 1


def test_the_reserve_never_holds_a_reply_past_the_staleness_bound() -> None:
    mailbox = ActionMailbox(max_staleness_frames=5, now_s=lambda: 10.0, jitter_reserve_frames=3)
    mailbox.begin_episode(episode=0, frame=0)
    taken = every_frame(mailbox, [4] * 40)
    assert mailbox.usual_staleness() == 5  # 4 + 3, capped at S
    assert all(t is not None and frame - t.obs_frame == 5 for frame, t in enumerate(taken[25:44], start=25))
    assert mailbox.replies_late == 0


def test_a_reply_to_an_observation_older_than_the_last_acted_on_is_superseded(mailbox: ActionMailbox) -> None:
    mailbox.advance(11)
    mailbox.offer(0, 10, 9.9, reply(1))
    taken = mailbox.take(12)
    assert taken is not None and taken.obs_frame == 10
    mailbox.offer(0, 10, 9.9, reply(2))  # the second answer of a hedged call
    mailbox.offer(0, 9, 9.9, reply(3))  # a slow call to an older observation
    assert mailbox.take(13) is None
    assert (mailbox.replies_superseded, mailbox.replies_late, mailbox.pending_count()) == (2, 0, 0)
