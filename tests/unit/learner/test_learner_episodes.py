"""Episode returns recovered from transitions: sums per gateway, completeness, and what is taken once."""

from __future__ import annotations

from learner_transitions import make_transition

from rtrl.services.learner.episodes import EpisodeReturns
from rtrl.transitions import Transition


def step(gateway: str, seq: int, episode: int, index: int, reward: float, done: bool = False) -> Transition:
    return make_transition(gateway, seq, episode=episode, step=index, reward=reward, terminated=done)


def test_interleaved_gateways_each_get_their_own_return():
    returns = EpisodeReturns()
    returns.add([step("a", 0, 0, 0, 1.0), step("b", 0, 0, 0, -1.0), step("a", 1, 0, 1, 2.0, done=True)])
    returns.add([step("b", 1, 0, 1, -1.0, done=True)])
    taken = returns.take()
    assert [(e.gateway_id, e.episode_return, e.steps, e.complete) for e in taken] == [
        ("a", 3.0, 2, True),
        ("b", -2.0, 2, True),
    ]
    assert returns.take() == [] and returns.episodes_finished == 2


def test_an_episode_joined_midway_or_with_a_gap_is_marked_incomplete():
    returns = EpisodeReturns()
    returns.add([step("a", 5, 0, 5, 1.0), step("a", 6, 0, 6, 1.0, done=True)])
    returns.add([step("a", 7, 1, 0, 1.0), step("a", 9, 1, 2, 1.0, done=True)])
    assert [(e.episode_return, e.complete) for e in returns.take()] == [(2.0, False), (2.0, False)]


def test_a_new_episode_without_an_end_seen_restarts_the_sum():
    returns = EpisodeReturns()
    returns.add([step("a", 0, 0, 0, 5.0), step("a", 1, 1, 0, 1.0, done=True)])
    [episode] = returns.take()
    assert (episode.episode, episode.episode_return, episode.complete) == (1, 1.0, True)
