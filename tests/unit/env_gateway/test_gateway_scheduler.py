"""The schedulers, driven with made-up times: next idle, max-time (Algorithm 1) and mean-time staggering."""

from __future__ import annotations

import itertools

import pytest

from rtrl.services.env_gateway.scheduler import (
    HEDGE_AFTER_MEANS,
    HEDGE_LATE_MEANS,
    HEDGE_MIN_S,
    MAX_TIME_OUTLIERS,
    MAX_TIME_WINDOW,
    SCHEDULER_NAMES,
    SCHEDULERS,
    WARMUP_REPLIES,
    LeadView,
    MaxTimeScheduler,
    MeanTimeScheduler,
    NextIdleScheduler,
    Plan,
    ReplicaView,
    SampleView,
    Scheduler,
    StaggeredScheduler,
    make_scheduler,
    next_in_rotation,
)

FAR = 1e9  # a sample deadline that never matters


def lead(frame_period_s: float = 1 / 60, configured: int = 2, usual_staleness: int = 0, room: int = 7) -> LeadView:
    return LeadView(frame_period_s, configured, usual_staleness, room)


class Pool:
    """Replicas as a scheduler sees them, with calls that end when the test says."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.in_flight: dict[str, int] = dict.fromkeys(addresses, 0)
        self.failed: set[str] = set()

    def views(self) -> list[ReplicaView]:
        return [ReplicaView(a, self.in_flight[a], a in self.failed) for a in self.addresses]

    def add(self, address: str) -> None:
        self.addresses.append(address)
        self.in_flight[address] = 0


def sample(now_s: float, deadline_s: float = FAR, unsent: bool = True, produced_s: float | None = None) -> SampleView:
    return SampleView(now_s if produced_s is None else produced_s, deadline_s, unsent)


def send_if_planned(
    scheduler: Scheduler,
    pool: Pool,
    now_s: float,
    new: bool = True,
    deadline_s: float = FAR,
    produced_s: float | None = None,
) -> Plan:
    plan = scheduler.plan(now_s, sample(now_s, deadline_s, new, produced_s), pool.views())
    if plan.send_to is not None:
        pool.in_flight[plan.send_to] += 1
        scheduler.on_sent(plan.send_to, now_s, len(pool.views()))
    return plan


def reply(scheduler: Scheduler, pool: Pool, address: str, round_trip_s: float) -> None:
    pool.in_flight[address] -= 1
    scheduler.on_reply(address, round_trip_s)


def warm_up(scheduler: StaggeredScheduler, pool: Pool, round_trip_s: float) -> float:
    """Sends the one-at-a-time calls until a round trip counts; returns the time of the last reply."""
    now_s = 0.0
    while scheduler.period_s == 0.0:
        plan = send_if_planned(scheduler, pool, now_s)
        assert plan.send_to is not None
        now_s += round_trip_s
        reply(scheduler, pool, plan.send_to, round_trip_s)
    return now_s


def test_next_in_rotation_skips_busy_replicas_and_prefers_ones_that_did_not_fail() -> None:
    views = [ReplicaView("a", 0, True), ReplicaView("b", 1, False), ReplicaView("c", 0, False)]
    assert next_in_rotation(views, after="c").address == "c"  # a failed recently, b is busy
    assert next_in_rotation(views[:2], after=None).address == "a"  # only a failed one is idle
    assert next_in_rotation([ReplicaView("b", 1, False)], after=None) is None


def test_next_idle_sends_each_sample_once_to_the_next_idle_replica() -> None:
    scheduler, pool = NextIdleScheduler(), Pool("a", "b")
    assert send_if_planned(scheduler, pool, 0.0).send_to == "a"
    assert send_if_planned(scheduler, pool, 0.0, new=False).send_to is None  # a sample is sent once
    assert send_if_planned(scheduler, pool, 0.016).send_to == "b"
    assert send_if_planned(scheduler, pool, 0.033).send_to is None  # both busy: it waits, unsent
    assert scheduler.lead_frames(lead(configured=2)) == 2  # no usual staleness yet: the configured lead
    assert scheduler.period_s == 0.0


def test_next_idle_leads_by_the_usual_staleness_when_replies_take_longer_but_at_most_s_minus_k() -> None:
    scheduler = NextIdleScheduler()
    assert scheduler.lead_frames(lead(configured=1, usual_staleness=5, room=7)) == 5
    assert scheduler.lead_frames(lead(configured=1, usual_staleness=8, room=7)) == 7  # a reply may miss a step
    assert scheduler.lead_frames(lead(configured=3, usual_staleness=2, room=7)) == 3  # never below L


def test_next_idle_sends_an_unsent_sample_when_a_call_ends_if_a_reply_can_still_come_in_time() -> None:
    scheduler, pool = NextIdleScheduler(), Pool("a")
    assert send_if_planned(scheduler, pool, 0.0).send_to == "a"
    reply(scheduler, pool, "a", 0.5)  # warm-up
    assert send_if_planned(scheduler, pool, 0.5).send_to == "a"
    reply(scheduler, pool, "a", 0.04)
    assert scheduler.mean_round_trip_s == 0.04
    # Produced at 0.5 with a 100 ms budget: at 0.57 only 30 ms are left, less than a round trip.
    assert send_if_planned(scheduler, pool, 0.57, deadline_s=0.6, produced_s=0.5).send_to is None
    assert send_if_planned(scheduler, pool, 0.55, deadline_s=0.6, produced_s=0.5).send_to == "a"


def test_next_idle_hedges_in_time_for_the_step_but_never_a_call_that_is_not_yet_late() -> None:
    scheduler = NextIdleScheduler()
    assert scheduler.hedge_after_s(0.03) is None  # no round trip counted yet
    scheduler.on_reply("a", 0.5)  # warm-up
    scheduler.on_reply("a", 0.008)
    assert scheduler.hedge_after_s() == pytest.approx(HEDGE_AFTER_MEANS * 0.008)  # plenty of time: 32 ms
    # 30 ms to the step: a second replica asked at 22 ms answers by 30 ms.
    assert scheduler.hedge_after_s(0.030) == pytest.approx(0.022)
    # Too little time for that: still not before the call is 1.5 means late (12 ms).
    assert scheduler.hedge_after_s(0.015) == pytest.approx(HEDGE_LATE_MEANS * 0.008)
    fast = NextIdleScheduler()
    fast.on_reply("a", 0.5)
    fast.on_reply("a", 0.0005)
    assert fast.hedge_after_s(0.030) == HEDGE_MIN_S  # 2 ms would hedge a healthy call's jitter


def test_next_idle_hedges_early_enough_for_a_slow_second_answer_not_only_an_average_one() -> None:
    """On a loaded machine round trips spread: hedging one mean before the step was a coin toss."""
    scheduler = NextIdleScheduler()
    scheduler.on_reply("a", 0.5)  # warm-up
    for round_trip_s in [0.015, 0.015] + [0.005] * 18:
        scheduler.on_reply("a", round_trip_s)
    assert scheduler.tail_round_trip_s == pytest.approx(0.015)  # the 90th percentile of the 20
    # 30 ms to the step: hedged at 15 ms, so a second answer as slow as 9 in 10 recent ones makes it.
    assert scheduler.hedge_after_s(0.030) == pytest.approx(0.015)
    assert scheduler.hedge_after_s(0.030) < 0.030 - scheduler.mean_round_trip_s
    # Still never before the call is 1.5 means late.
    assert scheduler.hedge_after_s(0.016) == pytest.approx(HEDGE_LATE_MEANS * scheduler.mean_round_trip_s)


def test_an_estimate_longer_than_any_samples_budget_does_not_stop_all_calls() -> None:
    scheduler, pool = NextIdleScheduler(), Pool("a")
    scheduler.on_reply("a", 0.01)  # warm-up
    scheduler.on_reply("a", 0.5)  # one outlier: longer than the 100 ms any sample has
    assert scheduler.mean_round_trip_s == 0.5
    assert send_if_planned(scheduler, pool, 1.0, deadline_s=1.1, produced_s=1.0).send_to == "a"
    assert not sample(1.2, deadline_s=1.1).worth_sending(1.2, 0.5)  # past its deadline: never


def test_staggered_schedulers_keep_one_call_in_flight_until_a_round_trip_counts() -> None:
    scheduler, pool = MaxTimeScheduler(), Pool("a", "b", "c")
    assert send_if_planned(scheduler, pool, 0.0).send_to == "a"
    assert send_if_planned(scheduler, pool, 0.001).send_to is None
    reply(scheduler, pool, "a", 0.5)  # a's warm-up (e.g. it built its model): not counted
    assert scheduler.period_s == 0.0
    assert send_if_planned(scheduler, pool, 0.5).send_to == "b"
    reply(scheduler, pool, "b", 0.5)
    assert send_if_planned(scheduler, pool, 1.0).send_to == "c"
    reply(scheduler, pool, "c", 0.5)
    assert send_if_planned(scheduler, pool, 1.5).send_to == "a"
    reply(scheduler, pool, "a", 0.03)  # a's second round trip counts
    assert scheduler.period_s == 0.03
    assert WARMUP_REPLIES == 1


def test_max_time_spaces_calls_t_over_n_apart_in_a_fixed_rotation() -> None:
    scheduler, pool = MaxTimeScheduler(), Pool("a", "b", "c")
    now_s = warm_up(scheduler, pool, 0.03)  # T = 30 ms, so one call every 10 ms
    sent: list[tuple[float, str]] = []
    calls_ending: list[tuple[float, str]] = []
    wake_ups = 0
    for step in range(100):  # 1 ms steps; a new sample every 16 ms
        now_s = round(now_s + 0.001, 6)
        for ends_s, address in [call for call in calls_ending if call[0] <= now_s]:
            calls_ending.remove((ends_s, address))
            reply(scheduler, pool, address, 0.03)  # every call takes exactly T
        plan = send_if_planned(scheduler, pool, now_s, new=step % 16 == 0)
        if plan.send_to is not None:
            sent.append((now_s, plan.send_to))
            calls_ending.append((round(now_s + 0.03, 6), plan.send_to))
        elif plan.wake_at_s is not None:
            wake_ups += 1
    times = [when for when, _ in sent]
    assert [to for _, to in sent] == ["b", "c", "a"] * 3 + ["b"]
    # 10 ms apart, up to the 1 ms step of this simulation; the grid itself does not drift.
    assert all(b - a == pytest.approx(0.01, abs=0.0011) for a, b in itertools.pairwise(times))
    assert times[-1] - times[0] == pytest.approx(0.09, abs=0.0011)
    assert scheduler.turns_passed == 0 and scheduler.slots_waited == 0
    assert wake_ups > 0  # between calls it asks to be woken at the next one


def test_max_time_grows_t_on_a_slower_call_and_pushes_the_next_call_back() -> None:
    scheduler, pool = MaxTimeScheduler(), Pool("a", "b")
    now_s = warm_up(scheduler, pool, 0.02)
    assert send_if_planned(scheduler, pool, now_s).send_to is not None
    assert scheduler.plan(now_s + 0.001, sample(now_s), pool.views()).wake_at_s == pytest.approx(now_s + 0.01)
    busy = next(a for a in pool.addresses if pool.in_flight[a])
    reply(scheduler, pool, busy, 0.06)  # slower than T: T grows to 60 ms, spacing to 30 ms
    assert scheduler.period_s == 0.06
    assert scheduler.plan(now_s + 0.011, sample(now_s), pool.views()).wake_at_s == pytest.approx(now_s + 0.03)
    scheduler.on_reply(busy, 0.01)  # a faster call does not lower T while the slow one is recent
    assert scheduler.period_s == 0.06
    assert scheduler.lead_frames(lead(1 / 60, usual_staleness=9)) == 4  # 60 ms is 3.6 frames at 60 fps


def test_max_time_sets_a_rare_spike_aside_and_forgets_slow_calls_once_they_leave_the_window() -> None:
    scheduler = MaxTimeScheduler()
    scheduler.on_reply("a", 5.0)  # warm-up
    for _ in range(MAX_TIME_WINDOW - 1):
        scheduler.on_reply("a", 0.02)
    scheduler.on_reply("a", 0.5)  # one call in 64 held up by the machine: not the spacing for everyone
    assert scheduler.period_s == 0.02
    for _ in range(MAX_TIME_OUTLIERS):
        scheduler.on_reply("a", 0.04)  # slow calls beyond the outliers set aside do set T
    assert scheduler.period_s == 0.04
    for _ in range(MAX_TIME_WINDOW):
        scheduler.on_reply("a", 0.03)  # the machine is faster again: the old calls age out
    assert scheduler.period_s == 0.03


def test_max_time_as_published_never_lowers_t() -> None:
    scheduler = MaxTimeScheduler(window=None, outliers=0)
    for round_trip_s in (5.0, 0.02, 0.5, *[0.02] * 200):
        scheduler.on_reply("a", round_trip_s)
    assert scheduler.period_s == 0.5
    with pytest.raises(ValueError, match="keep fewer than the window"):
        MaxTimeScheduler(window=4, outliers=4)


def test_mean_time_follows_the_running_mean() -> None:
    scheduler = MeanTimeScheduler(weight=0.5)
    scheduler.on_reply("a", 9.0)  # warm-up
    scheduler.on_reply("a", 0.02)
    scheduler.on_reply("a", 0.04)
    assert scheduler.period_s == pytest.approx(0.03)
    scheduler.on_reply("a", 0.02)
    assert scheduler.period_s == pytest.approx(0.025)
    assert scheduler.spacing_s(5) == pytest.approx(0.005)


def test_busy_replica_at_its_turn_is_passed_over_and_a_call_waits_when_none_is_idle() -> None:
    scheduler, pool = MeanTimeScheduler(), Pool("a", "b")
    now_s = warm_up(scheduler, pool, 0.02)  # T = 20 ms, spacing 10 ms
    first = send_if_planned(scheduler, pool, now_s).send_to
    assert first is not None
    second = send_if_planned(scheduler, pool, now_s + 0.01).send_to
    assert second is not None and second != first
    # Both calls run long: at the next turn nobody is idle, so the call waits (counted once).
    assert send_if_planned(scheduler, pool, now_s + 0.02).send_to is None
    assert send_if_planned(scheduler, pool, now_s + 0.021).send_to is None
    assert scheduler.slots_waited == 1
    reply(scheduler, pool, second, 0.025)  # the one whose turn it is not finishes first
    assert send_if_planned(scheduler, pool, now_s + 0.035).send_to == second
    assert scheduler.turns_passed == 1


def test_staggered_scheduler_waits_for_a_newer_sample_when_a_reply_would_come_too_late() -> None:
    scheduler, pool = MaxTimeScheduler(), Pool("a")
    now_s = warm_up(scheduler, pool, 0.05)
    assert scheduler.plan(now_s, sample(now_s, now_s + 0.04, produced_s=now_s - 0.06), pool.views()) == Plan()
    assert scheduler.plan(now_s, sample(now_s, now_s + 0.06), pool.views()).send_to == "a"


def test_new_replica_joins_the_rotation_and_narrows_the_spacing() -> None:
    scheduler, pool = MaxTimeScheduler(), Pool("a")
    now_s = warm_up(scheduler, pool, 0.04)
    assert send_if_planned(scheduler, pool, now_s).send_to == "a"
    assert scheduler.spacing_s(1) == pytest.approx(0.04)
    pool.add("b")
    assert send_if_planned(scheduler, pool, now_s + 0.04).send_to == "b"
    assert scheduler.plan(now_s + 0.041, sample(now_s), pool.views()).wake_at_s == pytest.approx(now_s + 0.06)


def test_without_replicas_the_scheduler_asks_again_soon() -> None:
    plan = MaxTimeScheduler().plan(5.0, sample(5.0), [])
    assert plan.send_to is None and plan.wake_at_s is not None and plan.wake_at_s > 5.0


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_make_scheduler_builds_each_policy_by_its_name(name: str) -> None:
    scheduler = make_scheduler(name)
    assert scheduler.name == name and type(scheduler) is SCHEDULERS[name]


def test_an_unknown_scheduler_name_is_refused_with_the_names_there_are() -> None:
    with pytest.raises(ValueError, match="choose one of next_idle, max_time, mean_time"):
        make_scheduler("round_robin")


@pytest.mark.parametrize("scheduler", [MaxTimeScheduler(), MeanTimeScheduler()], ids=lambda s: s.name)
def test_staggering_schedulers_take_the_default_of_every_hook(scheduler: StaggeredScheduler) -> None:
    """The hooks next_idle answers (inline dispatch, backlog, hedging) are off for the other policies, and
    their lead follows T alone, not the configured lead or the usual staleness."""
    pool = Pool("a", "b")
    assert not (scheduler.inline or scheduler.keeps_backlog or scheduler.hedges)
    assert scheduler.lead_frames(lead(configured=3, usual_staleness=6)) is None  # T unknown: keep L
    warm_up(scheduler, pool, 0.03)
    assert scheduler.lead_frames(lead(configured=3, usual_staleness=6)) == 2  # 30 ms is 1.8 frames
    # Times at which next_idle would hedge and keep a backlog (see the tests above).
    assert scheduler.hedge_after_s() is None and scheduler.hedge_after_s(0.03) is None
    assert scheduler.plan_hedge(1.0, sample(1.0, unsent=False), pool.views()) is None
    assert not scheduler.backlog_in_time(1.0, sample(1.0), own_step_s=2.0)


def test_next_idle_hedges_and_keeps_a_backlog_only_while_a_reply_can_come_in_time() -> None:
    scheduler = NextIdleScheduler()
    assert scheduler.inline and scheduler.keeps_backlog and scheduler.hedges
    scheduler.on_reply("a", 0.5)  # warm-up
    scheduler.on_reply("a", 0.01)
    assert scheduler.backlog_in_time(1.0, sample(1.0, deadline_s=1.1), own_step_s=1.05)
    assert not scheduler.backlog_in_time(1.0, sample(1.0, deadline_s=1.1), own_step_s=1.005)  # after its step
    assert not scheduler.backlog_in_time(1.0, sample(0.9, deadline_s=1.005), own_step_s=1.05)  # past its deadline
