"""Helpers of the fuzz suite: the reply checker, the served model's shape, the learner's test data.

Every reply to a hostile request must be OK or a clear refusal: one of `CLEAR_CODES` with a details
sentence, never UNKNOWN or INTERNAL (an unhandled exception), never a hang (each call has a deadline and
must come back within it, plus a margin for a busy machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from rtrl.models import ModelConfig
from rtrl.transitions import Transition

CLEAR_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
}
# A call may come back this much later than its deadline on a loaded 2-core machine; a hang would not.
LATE_MARGIN_S = 3.0
SERVED_CONFIG = ModelConfig(arch="mlp", observation_shape=(3,), action_count=4, hidden_size=16)
FUZZ_GATEWAY = "gw-fuzz"
CONSUMED_SEQS = 40
SMALL_MESSAGE_BYTES = 64 * 1024


def check_reply(call: Callable[[float], Any], timeout_s: float) -> grpc.StatusCode:
    """Runs `call(timeout_s)` and checks the outcome is OK or a clear refusal, in time; returns the code."""
    started_s = time.monotonic()
    try:
        call(timeout_s)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
        assert code in CLEAR_CODES, f"{code}: {error.details()}"
        assert error.details(), f"{code} came without a sentence saying what is wrong"
    elapsed_s = time.monotonic() - started_s
    assert elapsed_s <= timeout_s + LATE_MARGIN_S, f"the call took {elapsed_s:.1f} s with a {timeout_s:.1f} s deadline"
    return code


def vector_transition(seq: int) -> Transition:
    return Transition(
        gateway_id=FUZZ_GATEWAY,
        seq=seq,
        episode=0,
        step=seq,
        obs_frame=seq,
        observation=np.full((8,), seq, dtype=np.uint8),
        action=seq % 3,
        action_count=3,
        reward=0.0,
        terminated=False,
        truncated=False,
        fresh=True,
        fallback_policy=1,
        staleness_frames=2,
        policy_version=-1,
        behaviour_log_prob=0.0,
        obs_captured_unix_ns=0,
        action_applied_unix_ns=0,
        action_obs_frame=seq,
    )
