"""ActionMailbox on its own: which reply a step takes and how the others are counted (S = 5)."""

from __future__ import annotations

import pytest

from services.env_gateway.clock import ARRIVAL_MIN, ActionMailbox, ActionReply


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
