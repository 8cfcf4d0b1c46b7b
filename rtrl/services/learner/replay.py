"""Replay buffer that stores each observation once, pairs transitions with their successors by `seq`, and
each action with the observation it was computed from.

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

Decision observations (algorithms/base.py). A fresh action computed from an earlier step's observation
x_s (`action_obs_frame` < `obs_frame`, a reply that served the step after its own) is learned as the
decision it was: Q(x_s, a_t) towards r_t + gamma max Q(x_{s+1}), both observations already stored,
so the transition is trainable at once (a truncated one too: x_{s+1} came before the truncation), and
an n-step return neither starts nor passes through it. Its decision observation is found among the
gateway's `DECISION_HISTORY` newest transitions of the same episode without a gap; an action computed
from a later observation (a reply that overtook), or from one no longer there, cannot be paired:
counted in `decisions_unpaired`, never trained on. A slot whose decision observation has been
overwritten in the ring since is dropped (and counted) when a sample draws it. Fallback actions
depend on no observation and are learned on the step's own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rtrl.transitions import Transition

# Newest transitions per gateway in which a decision observation is looked for (a reply is never usable
# more than RTRL_MAX_STALENESS_FRAMES after its observation, a few steps at most).
DECISION_HISTORY = 32


class ReplayBatch(NamedTuple):
    """A sampled batch as numpy arrays (batch dimension first)."""

    obs: np.ndarray
    """x: the observation each action was computed from (usually the step's own)."""
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


@dataclass(frozen=True)
class _Stored:
    """One of a gateway's newest transitions, for finding decision observations."""

    write_id: int
    seq: int
    episode: int
    obs_frame: int


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
        # The write id of the observation each slot's action was computed from (its own, or an earlier
        # step's: then `_decided_earlier` is set and `_next_write_ids` points back too).
        self._decision_write_ids = np.full(capacity, -1, dtype=np.int64)
        self._decided_earlier = np.zeros(capacity, dtype=bool)
        self._trainable = np.zeros(capacity, dtype=bool)
        self._waiting: dict[str, _Waiting] = {}
        self._history: dict[str, deque[_Stored]] = {}
        # Decision observation's write id -> write ids of the later slots paired with it.
        self._paired_with: dict[int, list[int]] = {}
        self._rng = np.random.default_rng(seed)
        self.writes = 0
        """Transitions ever added."""
        self.sampled = 0
        """Transitions ever drawn into a batch (with repetitions): over `writes`, the replay ratio."""
        self.trainable_count = 0
        """Slots that can be sampled now (terminal, or linked to a live successor)."""
        self.unpaired = 0
        """Transitions that will never be trained on: no successor (truncation, gap) or no decision observation."""
        self.decisions_elsewhere = 0
        """Fresh transitions whose action came from an earlier step's observation, paired with it."""
        self.decisions_unpaired = 0
        """Fresh transitions whose decision observation was not found (also counted in `unpaired`)."""

    def __len__(self) -> int:
        return min(self.writes, self.capacity)

    def accepts(self, transition: Transition) -> bool:
        obs = transition.observation
        return tuple(obs.shape) == self.observation_shape and obs.dtype == self.observation_dtype

    def add(self, transition: Transition) -> None:
        """Stores `transition`, links it to its gateway's waiting predecessor if it is the successor, and pairs
        its action with the observation it was computed from."""
        if not self.accepts(transition):
            raise ValueError(
                f"observation of shape {list(transition.observation.shape)} and dtype {transition.observation.dtype} "
                f"does not fit a replay buffer of {list(self.observation_shape)} {self.observation_dtype}"
            )
        write_id = self.writes
        slot = write_id % self.capacity
        # The slot's previous occupant leaves the buffer (and with it, the chance to sample it), and so do
        # the decisions paired with its observation.
        self._untrain(slot)
        for paired in self._paired_with.pop(write_id - self.capacity, ()):
            if self._write_ids[paired % self.capacity] == paired and self._untrain(paired % self.capacity):
                self.unpaired += 1
        self._obs[slot] = transition.observation
        self._actions[slot] = transition.action
        self._rewards[slot] = transition.reward
        self._terminated[slot] = 1.0 if transition.terminated else 0.0
        self._write_ids[slot] = write_id
        self._next_write_ids[slot] = -1
        self._decision_write_ids[slot] = write_id
        self._decided_earlier[slot] = False
        self.writes += 1

        gateway = transition.gateway_id
        waiting = self._waiting.pop(gateway, None)
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

        history = self._remember(transition, write_id)
        decided_on = transition.action_obs_frame if transition.fresh else transition.obs_frame
        if decided_on != transition.obs_frame:
            self._pair_decision(slot, decided_on, history)
        elif transition.terminated:
            # The target does not bootstrap; next_obs only has to be a finite placeholder: its own.
            self._next_write_ids[slot] = write_id
            self._mark_trainable(slot)
        elif transition.truncated:
            self.unpaired += 1
        else:
            self._waiting[gateway] = _Waiting(write_id, transition.seq, transition.episode)

    def _remember(self, transition: Transition, write_id: int) -> deque[_Stored]:
        """Appends `transition` to its gateway's newest transitions, which hold one episode without a gap."""
        history = self._history.get(transition.gateway_id)
        if history is None:
            history = self._history[transition.gateway_id] = deque(maxlen=DECISION_HISTORY)
        elif history and not (transition.seq == history[-1].seq + 1 and transition.episode == history[-1].episode):
            history.clear()
        history.append(_Stored(write_id, transition.seq, transition.episode, transition.obs_frame))
        return history

    def _pair_decision(self, slot: int, decided_on: int, history: deque[_Stored]) -> None:
        """Makes `slot` the decision (x_s, a, r, x_{s+1}) of the earlier observation of frame `decided_on`."""
        stored = list(history)
        for index, earlier in enumerate(stored[:-1]):
            # A tiny ring may already have reused its slot (this very write may have).
            still_stored = self._write_ids[earlier.write_id % self.capacity] == earlier.write_id
            if earlier.obs_frame == decided_on and still_stored:
                self._decision_write_ids[slot] = earlier.write_id
                self._next_write_ids[slot] = stored[index + 1].write_id
                self._decided_earlier[slot] = True
                self._paired_with.setdefault(earlier.write_id, []).append(int(self._write_ids[slot]))
                self.decisions_elsewhere += 1
                self._mark_trainable(slot)
                return
        # A later observation (a reply that overtook), or one older than the history or before a gap.
        self.decisions_unpaired += 1
        self.unpaired += 1

    def _mark_trainable(self, slot: int) -> None:
        if not self._trainable[slot]:
            self._trainable[slot] = True
            self.trainable_count += 1

    def _untrain(self, slot: int) -> bool:
        """Takes `slot` out of the trainable set; True if it was in it."""
        if not self._trainable[slot]:
            return False
        self._trainable[slot] = False
        self.trainable_count -= 1
        return True

    def sample(self, batch_size: int) -> ReplayBatch:
        """Uniformly samples `batch_size` trainable transitions (with replacement), with n-step returns."""
        candidates = np.flatnonzero(self._trainable)
        if candidates.size == 0:
            raise ValueError("the replay buffer holds no trainable transition yet; add more before sampling")
        slots = candidates[self._rng.integers(0, candidates.size, size=batch_size)]
        self.sampled += batch_size
        rewards = self._rewards[slots].astype(np.float64)
        terminated = self._terminated[slots] > 0.0
        steps = np.ones(batch_size, dtype=np.int64)
        last = slots.copy()  # the newest transition of each return; its successor is the bootstrap state
        growing = ~self._decided_earlier[slots]  # a decision on an earlier observation stays one step
        for _ in range(self.n_step - 1):
            successors = self._next_write_ids[last] % self.capacity
            # A terminal's link points at itself, so `~terminated` also keeps the chain from looping there.
            extend = growing & ~terminated & self._trainable[successors] & ~self._decided_earlier[successors]
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
            obs=self._obs[self._decision_write_ids[slots] % self.capacity],
            actions=self._actions[slots],
            rewards=rewards.astype(np.float32),
            next_obs=self._obs[next_slots],
            terminated=terminated.astype(np.float32),
            steps=steps,
        )
