from rtrl.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainRequest(_message.Message):
    __slots__ = ("gateway_id", "through_seq", "updates")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    through_seq: int
    updates: int
    def __init__(self, gateway_id: _Optional[str] = ..., through_seq: _Optional[int] = ..., updates: _Optional[int] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("updates", "train_ms", "checkpoint_version", "wait_ms", "updates_total")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    updates: int
    train_ms: float
    checkpoint_version: int
    wait_ms: float
    updates_total: int
    def __init__(self, updates: _Optional[int] = ..., train_ms: _Optional[float] = ..., checkpoint_version: _Optional[int] = ..., wait_ms: _Optional[float] = ..., updates_total: _Optional[int] = ...) -> None: ...

class LearnerServiceGetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LearnerServiceGetStatusResponse(_message.Message):
    __slots__ = ("algorithm", "updates", "updates_per_s", "transitions_consumed", "transitions_invalid", "replay_size", "checkpoint_version", "checkpoints_published", "checkpoint_published_unix_ms", "loss", "epsilon", "stream_length", "stream_pending", "stream_lag", "env_steps", "transitions_unpaired", "uptime_s", "checkpoint_publish_failures", "mode", "train_calls", "policy_lag", "transitions_too_old", "transitions_skipped", "transitions_trimmed", "backlog_skips", "max_lag_entries", "checkpoint_publish_last_error", "decisions_elsewhere", "decisions_unpaired", "update_metrics", "unrolls_skipped")
    class UpdateMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    UPDATES_PER_S_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_INVALID_FIELD_NUMBER: _ClassVar[int]
    REPLAY_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PUBLISHED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    STREAM_LENGTH_FIELD_NUMBER: _ClassVar[int]
    STREAM_PENDING_FIELD_NUMBER: _ClassVar[int]
    STREAM_LAG_FIELD_NUMBER: _ClassVar[int]
    ENV_STEPS_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_UNPAIRED_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PUBLISH_FAILURES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_CALLS_FIELD_NUMBER: _ClassVar[int]
    POLICY_LAG_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_TOO_OLD_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_TRIMMED_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_SKIPS_FIELD_NUMBER: _ClassVar[int]
    MAX_LAG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PUBLISH_LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_ELSEWHERE_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_UNPAIRED_FIELD_NUMBER: _ClassVar[int]
    UPDATE_METRICS_FIELD_NUMBER: _ClassVar[int]
    UNROLLS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    updates: int
    updates_per_s: float
    transitions_consumed: int
    transitions_invalid: int
    replay_size: int
    checkpoint_version: int
    checkpoints_published: int
    checkpoint_published_unix_ms: int
    loss: float
    epsilon: float
    stream_length: int
    stream_pending: int
    stream_lag: int
    env_steps: int
    transitions_unpaired: int
    uptime_s: float
    checkpoint_publish_failures: int
    mode: str
    train_calls: int
    policy_lag: PolicyLag
    transitions_too_old: int
    transitions_skipped: int
    transitions_trimmed: int
    backlog_skips: int
    max_lag_entries: int
    checkpoint_publish_last_error: str
    decisions_elsewhere: int
    decisions_unpaired: int
    update_metrics: _containers.ScalarMap[str, float]
    unrolls_skipped: int
    def __init__(self, algorithm: _Optional[str] = ..., updates: _Optional[int] = ..., updates_per_s: _Optional[float] = ..., transitions_consumed: _Optional[int] = ..., transitions_invalid: _Optional[int] = ..., replay_size: _Optional[int] = ..., checkpoint_version: _Optional[int] = ..., checkpoints_published: _Optional[int] = ..., checkpoint_published_unix_ms: _Optional[int] = ..., loss: _Optional[float] = ..., epsilon: _Optional[float] = ..., stream_length: _Optional[int] = ..., stream_pending: _Optional[int] = ..., stream_lag: _Optional[int] = ..., env_steps: _Optional[int] = ..., transitions_unpaired: _Optional[int] = ..., uptime_s: _Optional[float] = ..., checkpoint_publish_failures: _Optional[int] = ..., mode: _Optional[str] = ..., train_calls: _Optional[int] = ..., policy_lag: _Optional[_Union[PolicyLag, _Mapping]] = ..., transitions_too_old: _Optional[int] = ..., transitions_skipped: _Optional[int] = ..., transitions_trimmed: _Optional[int] = ..., backlog_skips: _Optional[int] = ..., max_lag_entries: _Optional[int] = ..., checkpoint_publish_last_error: _Optional[str] = ..., decisions_elsewhere: _Optional[int] = ..., decisions_unpaired: _Optional[int] = ..., update_metrics: _Optional[_Mapping[str, float]] = ..., unrolls_skipped: _Optional[int] = ...) -> None: ...

class PolicyLag(_message.Message):
    __slots__ = ("transitions", "fresh", "fallback_fraction", "version_lag_min", "version_lag_mean", "version_lag_max", "lag_ms", "staleness_frames")
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_LAG_MIN_FIELD_NUMBER: _ClassVar[int]
    VERSION_LAG_MEAN_FIELD_NUMBER: _ClassVar[int]
    VERSION_LAG_MAX_FIELD_NUMBER: _ClassVar[int]
    LAG_MS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FRAMES_FIELD_NUMBER: _ClassVar[int]
    transitions: int
    fresh: int
    fallback_fraction: float
    version_lag_min: int
    version_lag_mean: float
    version_lag_max: int
    lag_ms: _common_pb2.Distribution
    staleness_frames: _common_pb2.Distribution
    def __init__(self, transitions: _Optional[int] = ..., fresh: _Optional[int] = ..., fallback_fraction: _Optional[float] = ..., version_lag_min: _Optional[int] = ..., version_lag_mean: _Optional[float] = ..., version_lag_max: _Optional[int] = ..., lag_ms: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., staleness_frames: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ...) -> None: ...
