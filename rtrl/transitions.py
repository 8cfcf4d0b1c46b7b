"""The transition record and its explicit binary schema (no pickle crosses a process).

One transition is one decision step executed by a gateway: the observation the step started from,
the action applied for the step, the reward summed over its frames, and where the action came from
(a fresh inference reply, with the frame of the observation it was computed from, or the fallback
policy). The learner pairs consecutive transitions of the same gateway (by `seq`) to recover the next
observation, and a step with the earlier step whose observation chose its action (`action_obs_frame`).

Encoding, little-endian, version 2 (version 1 had no `action_obs_frame`):

    magic        4s   b"RTRT"
    version      u8   2
    header       struct _HEADER (fields in the order of the comment above it)
    gateway_id   u8 length + UTF-8 bytes
    obs dtype    u8   1 = uint8, 2 = float32
    obs ndim     u8
    obs shape    ndim x u32
    obs data     product(shape) x itemsize bytes, row-major

`decode` rejects anything that does not match exactly with a `TransitionDecodeError` that says what
is wrong; it never returns a partly-filled record.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

# Name of the Redis Stream entry field that holds one encoded transition.
STREAM_FIELD = "transition"

MAGIC = b"RTRT"
VERSION = 2

FLAG_TERMINATED = 1
FLAG_TRUNCATED = 2
FLAG_FRESH = 4

# seq, episode, step, obs_frame, action, action_count, reward, flags, fallback_policy, staleness_frames,
# policy_version, behaviour_log_prob, obs_captured_unix_ns, action_applied_unix_ns, action_obs_frame
_HEADER = struct.Struct("<QQIQHHfBBIqfqqq")
_PREFIX = struct.Struct("<4sB")
_DTYPES: dict[int, np.dtype] = {1: np.dtype(np.uint8), 2: np.dtype(np.float32)}
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}
MAX_NDIM = 8


class TransitionDecodeError(ValueError):
    """Bytes that are not a valid encoded transition. The message says which part is wrong."""


@dataclass(frozen=True)
class Transition:
    """One executed decision step of one gateway."""

    gateway_id: str
    """Identifier of the gateway (game instance) that produced the step."""
    seq: int
    """Position in this gateway's sequence of transitions; consecutive steps differ by one."""
    episode: int
    """Episode index at the gateway."""
    step: int
    """Decision step index within the episode."""
    obs_frame: int
    """Frame index at which `observation` was captured."""
    observation: np.ndarray
    """Preprocessed observation the step started from (e.g. uint8 [stack, height, width])."""
    action: int
    """Action applied for the step."""
    action_count: int
    """Number of discrete actions of the gateway's game (so every transition is self-describing)."""
    reward: float
    """Reward summed over the step's frames."""
    terminated: bool
    """The episode ended in a terminal state during this step."""
    truncated: bool
    """The episode was cut short (time limit) during this step."""
    fresh: bool
    """True when `action` came from an inference reply, False when the fallback policy chose it."""
    fallback_policy: int
    """The gateway's fallback policy (rtrl.v1.FallbackPolicy value)."""
    staleness_frames: int
    """Frames from the observation the action was computed from to its first applied frame (0 if fallback)."""
    policy_version: int
    """Checkpoint version that chose the action (-1 for a fallback action)."""
    behaviour_log_prob: float
    """Log-probability of `action` under the behaviour policy that chose it."""
    obs_captured_unix_ns: int
    """Wall-clock time the observation was captured."""
    action_applied_unix_ns: int
    """Wall-clock time the action was first applied."""
    action_obs_frame: int
    """Frame of the observation `action` was computed from: `obs_frame` when the reply to this step's own
    observation acted on it, an earlier step's `obs_frame` when a later reply did, -1 for a fallback action."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


def encode(t: Transition) -> bytes:
    obs = np.ascontiguousarray(t.observation)
    code = _DTYPE_CODES.get(obs.dtype)
    if code is None:
        raise ValueError(f"observation dtype {obs.dtype} cannot be encoded; use uint8 or float32")
    if obs.ndim > MAX_NDIM:
        raise ValueError(f"observation has {obs.ndim} dimensions; at most {MAX_NDIM} can be encoded")
    gateway = t.gateway_id.encode("utf-8")
    if len(gateway) > 255:
        raise ValueError("gateway_id is longer than 255 bytes; choose a shorter RTRL_GATEWAY_ID")
    flags = (
        (FLAG_TERMINATED if t.terminated else 0)
        | (FLAG_TRUNCATED if t.truncated else 0)
        | (FLAG_FRESH if t.fresh else 0)
    )
    header = _HEADER.pack(
        t.seq,
        t.episode,
        t.step,
        t.obs_frame,
        t.action,
        t.action_count,
        t.reward,
        flags,
        t.fallback_policy,
        t.staleness_frames,
        t.policy_version,
        t.behaviour_log_prob,
        t.obs_captured_unix_ns,
        t.action_applied_unix_ns,
        t.action_obs_frame,
    )
    shape = struct.pack(f"<BB{obs.ndim}I", code, obs.ndim, *obs.shape)
    return b"".join((_PREFIX.pack(MAGIC, VERSION), header, bytes((len(gateway),)), gateway, shape, obs.tobytes()))


def decode(data: bytes) -> Transition:
    view = memoryview(data)
    offset = 0

    def take(size: int, what: str) -> memoryview:
        nonlocal offset
        if offset + size > len(view):
            raise TransitionDecodeError(
                f"transition is truncated: {what} needs {size} bytes at offset {offset} "
                f"but only {len(view) - offset} remain"
            )
        chunk = view[offset : offset + size]
        offset += size
        return chunk

    magic, version = _PREFIX.unpack(take(_PREFIX.size, "the magic and version"))
    if magic != MAGIC:
        raise TransitionDecodeError(f"not a transition: magic bytes are {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise TransitionDecodeError(
            f"transition schema version {version} is not supported: this learner reads version {VERSION}, which "
            "carries the frame each action was computed from; run gateways and learner of the same rtrl release"
        )
    (
        seq,
        episode,
        step,
        obs_frame,
        action,
        action_count,
        reward,
        flags,
        fallback_policy,
        staleness_frames,
        policy_version,
        behaviour_log_prob,
        obs_captured_unix_ns,
        action_applied_unix_ns,
        action_obs_frame,
    ) = _HEADER.unpack(take(_HEADER.size, "the header"))
    if action >= action_count:
        raise TransitionDecodeError(f"transition action {action} is out of range for {action_count} actions")
    if flags & ~(FLAG_TERMINATED | FLAG_TRUNCATED | FLAG_FRESH):
        raise TransitionDecodeError(f"transition flags {flags:#x} have unknown bits set")
    if (action_obs_frame >= 0) != bool(flags & FLAG_FRESH):
        raise TransitionDecodeError(
            f"transition action_obs_frame {action_obs_frame} does not fit a "
            f"{'fresh' if flags & FLAG_FRESH else 'fallback'} action: a fresh action names the frame of the "
            "observation it was computed from (0 or more), a fallback action names none (-1)"
        )
    (gateway_len,) = take(1, "the gateway id length")
    try:
        gateway_id = bytes(take(gateway_len, "the gateway id")).decode("utf-8")
    except UnicodeDecodeError:
        raise TransitionDecodeError("transition gateway id is not valid UTF-8") from None
    code, ndim = take(2, "the observation dtype and rank")
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise TransitionDecodeError(f"observation dtype code {code} is unknown; expected 1 (uint8) or 2 (float32)")
    if ndim > MAX_NDIM:
        raise TransitionDecodeError(f"observation rank {ndim} exceeds the maximum of {MAX_NDIM}")
    shape = struct.unpack(f"<{ndim}I", take(4 * ndim, "the observation shape"))
    expected = math.prod(shape) * dtype.itemsize  # math.prod: numpy's costs 4 us a call on a tuple
    remaining = len(view) - offset
    if remaining != expected:
        raise TransitionDecodeError(
            f"observation of shape {list(shape)} and dtype {dtype} needs {expected} bytes "
            f"but {remaining} follow the header"
        )
    observation = np.frombuffer(take(expected, "the observation"), dtype=dtype).reshape(shape)
    return Transition(
        gateway_id=gateway_id,
        seq=seq,
        episode=episode,
        step=step,
        obs_frame=obs_frame,
        observation=observation,
        action=action,
        action_count=action_count,
        reward=reward,
        terminated=bool(flags & FLAG_TERMINATED),
        truncated=bool(flags & FLAG_TRUNCATED),
        fresh=bool(flags & FLAG_FRESH),
        fallback_policy=fallback_policy,
        staleness_frames=staleness_frames,
        policy_version=policy_version,
        behaviour_log_prob=behaviour_log_prob,
        obs_captured_unix_ns=obs_captured_unix_ns,
        action_applied_unix_ns=action_applied_unix_ns,
        action_obs_frame=action_obs_frame,
    )
