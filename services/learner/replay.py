"""Replay buffer that stores each observation once and pairs transitions with their successors by `seq`.

The stream carries only the observation a step started from, so the next observation of a transition
is the observation of its successor: the next `seq` of the same gateway in the same episode. Each slot
of the ring holds one transition; a trainable slot records the write id of its successor's slot, so
`next_obs` is read from the ring instead of being stored a second time (50k Atari stacks: ~1.4 GB).

Pairing rules, applied as transitions arrive in stream order (several gateways may interleave):
- a terminated transition needs no successor (its target does not bootstrap) and is trainable at once;
- a truncated transition has no successor in its episode: counted `unpaired`, never trained on;
- otherwise it waits for the next transition of its gateway; when that is seq + 1 of the same episode
  and the waiting slot has not been overwritten meanwhile, both are linked; anything else (a dropped
  or re-delivered transition, an episode change without a terminal flag) leaves it `unpaired`.

Slots are identified by a global write id (slot = write_id % capacity), so a link can be checked
against what a slot holds now: a successor is written after its predecessor, so it outlives it in the
ring, and a predecessor whose slot was reused before its successor arrived is never linked.

n-step returns (`n_step` > 1) follow those links at sampling time: from a sampled transition t the
return r_t + gamma r_{t+1} + ... grows one step at a time while the transition reached is itself
trainable and no terminal was passed, up to n steps. So it stops at a terminal (target without
bootstrap), before a truncation, a gap or the gateway's newest transition (bootstrap from the last
state reached, a true state of the same episode), and never crosses episodes or gateways. A chain
stays valid for as long as its first transition is stored, because every later link is newer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rtrl.transitions import Transition


class ReplayBatch(NamedTuple):
    """A sampled batch as numpy arrays (batch dimension first)."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    """r_t, or with n-step returns the discounted sum r_t + gamma r_{t+1} + ... + gamma^{m-1} r_{t+m-1}."""
    next_obs: np.ndarray
    """s_{t+m}: the state the target bootstraps from (a placeholder when terminated)."""
    terminated: np.ndarray
    """1.0 when the episode terminated within the m steps (the target does not bootstrap)."""
    steps: np.ndarray
    """m, the number of rewards summed (1 <= m <= n_step), for the bootstrap discount gamma^m."""


@dataclass(frozen=True)
class _Waiting:
    """A gateway's newest non-terminal transition, waiting for its successor."""

    write_id: int
    seq: int
    episode: int


class ReplayBuffer:
    """A ring of `capacity` transitions of one observation shape and dtype; used from one thread."""

    def __init__(
        self,
        capacity: int,
        observation_shape: tuple[int, ...],
        observation_dtype: np.dtype,
        seed: int = 0,
        n_step: int = 1,
        gamma: float | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("a replay buffer needs a capacity of at least 1")
        if n_step < 1:
            raise ValueError(f"n_step must be at least 1, got {n_step}")
        if n_step > 1 and gamma is None:
            raise ValueError(f"n-step returns (n_step={n_step}) need the discount gamma to sum rewards with")
        self.capacity = capacity
        self.n_step = n_step
        # Unused for one-step returns, which are just r_t.
        self.gamma = 1.0 if gamma is None else gamma
        self.observation_shape = tuple(observation_shape)
        self.observation_dtype = np.dtype(observation_dtype)
        # np.zeros maps untouched pages lazily, so a large buffer costs memory only as it fills.
        self._obs = np.zeros((capacity, *self.observation_shape), dtype=self.observation_dtype)
        self._actions = np.zeros(capacity, dtype=np.int64)
        self._rewards = np.zeros(capacity, dtype=np.float32)
        self._terminated = np.zeros(capacity, dtype=np.float32)
        self._write_ids = np.full(capacity, -1, dtype=np.int64)
        self._next_write_ids = np.full(capacity, -1, dtype=np.int64)
        self._trainable = np.zeros(capacity, dtype=bool)
        self._waiting: dict[str, _Waiting] = {}
        self._rng = np.random.default_rng(seed)
        self.writes = 0
        """Transitions ever added."""
        self.trainable_count = 0
        """Slots that can be sampled now (terminal, or linked to a live successor)."""
        self.unpaired = 0
        """Transitions that will never be trained on because no successor could be paired."""

    def __len__(self) -> int:
        return min(self.writes, self.capacity)

    def accepts(self, transition: Transition) -> bool:
        obs = transition.observation
        return tuple(obs.shape) == self.observation_shape and obs.dtype == self.observation_dtype

    def add(self, transition: Transition) -> None:
        """Stores `transition` and links it to its gateway's waiting predecessor if it is the successor."""
        if not self.accepts(transition):
            raise ValueError(
                f"observation of shape {list(transition.observation.shape)} and dtype {transition.observation.dtype} "
                f"does not fit a replay buffer of {list(self.observation_shape)} {self.observation_dtype}"
            )
        write_id = self.writes
        slot = write_id % self.capacity
        # The slot's previous occupant leaves the buffer (and with it, the chance to sample it).
        if self._trainable[slot]:
            self._trainable[slot] = False
            self.trainable_count -= 1
        self._obs[slot] = transition.observation
        self._actions[slot] = transition.action
        self._rewards[slot] = transition.reward
        self._terminated[slot] = 1.0 if transition.terminated else 0.0
        self._write_ids[slot] = write_id
        self._next_write_ids[slot] = -1
        self.writes += 1

        waiting = self._waiting.pop(transition.gateway_id, None)
        if waiting is not None:
            waiting_slot = waiting.write_id % self.capacity
            is_successor = transition.seq == waiting.seq + 1 and transition.episode == waiting.episode
            # Checked after the write above: it may just have reused the waiting slot.
            still_stored = self._write_ids[waiting_slot] == waiting.write_id
            if is_successor and still_stored:
                self._next_write_ids[waiting_slot] = write_id
                self._mark_trainable(waiting_slot)
            else:
                self.unpaired += 1

        if transition.terminated:
            # The target does not bootstrap; next_obs only has to be a finite placeholder: its own.
            self._next_write_ids[slot] = write_id
            self._mark_trainable(slot)
        elif transition.truncated:
            self.unpaired += 1
        else:
            self._waiting[transition.gateway_id] = _Waiting(write_id, transition.seq, transition.episode)

    def _mark_trainable(self, slot: int) -> None:
        if not self._trainable[slot]:
            self._trainable[slot] = True
            self.trainable_count += 1

    def sample(self, batch_size: int) -> ReplayBatch:
        """Uniformly samples `batch_size` trainable transitions (with replacement), with n-step returns."""
        candidates = np.flatnonzero(self._trainable)
        if candidates.size == 0:
            raise ValueError("the replay buffer holds no trainable transition yet; add more before sampling")
        slots = candidates[self._rng.integers(0, candidates.size, size=batch_size)]
        rewards = self._rewards[slots].astype(np.float64)
        terminated = self._terminated[slots] > 0.0
        steps = np.ones(batch_size, dtype=np.int64)
        last = slots.copy()  # the newest transition of each return; its successor is the bootstrap state
        for _ in range(self.n_step - 1):
            successors = self._next_write_ids[last] % self.capacity
            # A terminal's link points at itself, so `~terminated` also keeps the chain from looping there.
            extend = ~terminated & self._trainable[successors]
            if not extend.any():
                break
            rewards[extend] += self.gamma ** steps[extend] * self._rewards[successors[extend]]
            terminated[extend] = self._terminated[successors[extend]] > 0.0
            last[extend] = successors[extend]
            steps[extend] += 1
        next_write_ids = self._next_write_ids[last]
        next_slots = next_write_ids % self.capacity
        # Cheap guard for the invariant the module docstring argues: a linked successor is still stored.
        assert np.array_equal(self._write_ids[next_slots], next_write_ids), "replay links point at reused slots"
        return ReplayBatch(
            obs=self._obs[slots],
            actions=self._actions[slots],
            rewards=rewards.astype(np.float32),
            next_obs=self._obs[next_slots],
            terminated=terminated.astype(np.float32),
            steps=steps,
        )
