from rtrl.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FallbackPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FALLBACK_POLICY_UNSPECIFIED: _ClassVar[FallbackPolicy]
    FALLBACK_POLICY_NOOP: _ClassVar[FallbackPolicy]
    FALLBACK_POLICY_REPEAT_LAST: _ClassVar[FallbackPolicy]
    FALLBACK_POLICY_RANDOM: _ClassVar[FallbackPolicy]
FALLBACK_POLICY_UNSPECIFIED: FallbackPolicy
FALLBACK_POLICY_NOOP: FallbackPolicy
FALLBACK_POLICY_REPEAT_LAST: FallbackPolicy
FALLBACK_POLICY_RANDOM: FallbackPolicy

class GetSpecRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSpecResponse(_message.Message):
    __slots__ = ("env_id", "observation_shape", "observation_dtype", "action_count", "action_meanings", "frame_rate_hz", "decision_interval_frames", "lead_frames", "max_staleness_frames", "fallback_policy", "fallback_action", "gateway_id")
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTION_MEANINGS_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    DECISION_INTERVAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    LEAD_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_POLICY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ACTION_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    observation_shape: _containers.RepeatedScalarFieldContainer[int]
    observation_dtype: _common_pb2.DType
    action_count: int
    action_meanings: _containers.RepeatedScalarFieldContainer[str]
    frame_rate_hz: float
    decision_interval_frames: int
    lead_frames: int
    max_staleness_frames: int
    fallback_policy: FallbackPolicy
    fallback_action: int
    gateway_id: str
    def __init__(self, env_id: _Optional[str] = ..., observation_shape: _Optional[_Iterable[int]] = ..., observation_dtype: _Optional[_Union[_common_pb2.DType, str]] = ..., action_count: _Optional[int] = ..., action_meanings: _Optional[_Iterable[str]] = ..., frame_rate_hz: _Optional[float] = ..., decision_interval_frames: _Optional[int] = ..., lead_frames: _Optional[int] = ..., max_staleness_frames: _Optional[int] = ..., fallback_policy: _Optional[_Union[FallbackPolicy, str]] = ..., fallback_action: _Optional[int] = ..., gateway_id: _Optional[str] = ...) -> None: ...

class StreamFramesRequest(_message.Message):
    __slots__ = ("every_nth_frame",)
    EVERY_NTH_FRAME_FIELD_NUMBER: _ClassVar[int]
    every_nth_frame: int
    def __init__(self, every_nth_frame: _Optional[int] = ...) -> None: ...

class StreamFramesResponse(_message.Message):
    __slots__ = ("frame_index", "rgb", "height", "width", "action", "action_fresh", "episode_index", "captured_unix_ns", "frames_skipped")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FRESH_FIELD_NUMBER: _ClassVar[int]
    EPISODE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    rgb: bytes
    height: int
    width: int
    action: int
    action_fresh: bool
    episode_index: int
    captured_unix_ns: int
    frames_skipped: int
    def __init__(self, frame_index: _Optional[int] = ..., rgb: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., action: _Optional[int] = ..., action_fresh: _Optional[bool] = ..., episode_index: _Optional[int] = ..., captured_unix_ns: _Optional[int] = ..., frames_skipped: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStats(_message.Message):
    __slots__ = ("address", "requests", "replies", "failures", "in_flight", "latency_ms", "checkpoint_version", "batch_size", "inference_ms", "excluded", "warming_up", "transport")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    WARMING_UP_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    address: str
    requests: int
    replies: int
    failures: int
    in_flight: int
    latency_ms: _common_pb2.Distribution
    checkpoint_version: int
    batch_size: _common_pb2.Distribution
    inference_ms: _common_pb2.Distribution
    excluded: bool
    warming_up: bool
    transport: str
    def __init__(self, address: _Optional[str] = ..., requests: _Optional[int] = ..., replies: _Optional[int] = ..., failures: _Optional[int] = ..., in_flight: _Optional[int] = ..., latency_ms: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., checkpoint_version: _Optional[int] = ..., batch_size: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., inference_ms: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., excluded: _Optional[bool] = ..., warming_up: _Optional[bool] = ..., transport: _Optional[str] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("gateway_id", "uptime_s", "frames", "measured_frame_rate_hz", "frames_late", "decisions", "decisions_fresh", "decisions_fallback", "coverage", "requests_sent", "requests_not_sent", "requests_failed", "replies_late", "replies_superseded", "staleness_frames", "decision_overhead_ms", "replicas", "episodes", "last_episode_return", "mean_episode_return", "transitions_published", "transitions_dropped", "transitions_queued", "replica_count", "episode_frames", "scheduler", "scheduler_period_ms", "scheduler_spacing_ms", "scheduler_turns_passed", "scheduler_slots_waited", "requests_resent", "lead_frames", "interaction", "sequential_cycles", "train_ms", "train_failures", "cycle_ms", "staleness_frames_histogram", "recent_episode_returns", "unknown_variable_frames", "unknown_variable_truncations", "variables", "reward_terms", "last_episode_end_rules")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FRAME_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    FRAMES_LATE_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FRESH_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_SENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_NOT_SENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FAILED_FIELD_NUMBER: _ClassVar[int]
    REPLIES_LATE_FIELD_NUMBER: _ClassVar[int]
    REPLIES_SUPERSEDED_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FRAMES_FIELD_NUMBER: _ClassVar[int]
    DECISION_OVERHEAD_MS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    LAST_EPISODE_RETURN_FIELD_NUMBER: _ClassVar[int]
    MEAN_EPISODE_RETURN_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    REPLICA_COUNT_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_SPACING_MS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_TURNS_PASSED_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_SLOTS_WAITED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_RESENT_FIELD_NUMBER: _ClassVar[int]
    LEAD_FRAMES_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_FIELD_NUMBER: _ClassVar[int]
    SEQUENTIAL_CYCLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_MS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CYCLE_MS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FRAMES_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    RECENT_EPISODE_RETURNS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_VARIABLE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_VARIABLE_TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    REWARD_TERMS_FIELD_NUMBER: _ClassVar[int]
    LAST_EPISODE_END_RULES_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    uptime_s: float
    frames: int
    measured_frame_rate_hz: float
    frames_late: int
    decisions: int
    decisions_fresh: int
    decisions_fallback: int
    coverage: float
    requests_sent: int
    requests_not_sent: int
    requests_failed: int
    replies_late: int
    replies_superseded: int
    staleness_frames: _common_pb2.Distribution
    decision_overhead_ms: _common_pb2.Distribution
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStats]
    episodes: int
    last_episode_return: float
    mean_episode_return: float
    transitions_published: int
    transitions_dropped: int
    transitions_queued: int
    replica_count: int
    episode_frames: int
    scheduler: str
    scheduler_period_ms: float
    scheduler_spacing_ms: float
    scheduler_turns_passed: int
    scheduler_slots_waited: int
    requests_resent: int
    lead_frames: int
    interaction: str
    sequential_cycles: int
    train_ms: _common_pb2.Distribution
    train_failures: int
    cycle_ms: _common_pb2.Distribution
    staleness_frames_histogram: _containers.RepeatedScalarFieldContainer[int]
    recent_episode_returns: _containers.RepeatedScalarFieldContainer[float]
    unknown_variable_frames: int
    unknown_variable_truncations: int
    variables: _containers.RepeatedCompositeFieldContainer[ProfileVariable]
    reward_terms: _containers.RepeatedCompositeFieldContainer[RewardTermStats]
    last_episode_end_rules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, gateway_id: _Optional[str] = ..., uptime_s: _Optional[float] = ..., frames: _Optional[int] = ..., measured_frame_rate_hz: _Optional[float] = ..., frames_late: _Optional[int] = ..., decisions: _Optional[int] = ..., decisions_fresh: _Optional[int] = ..., decisions_fallback: _Optional[int] = ..., coverage: _Optional[float] = ..., requests_sent: _Optional[int] = ..., requests_not_sent: _Optional[int] = ..., requests_failed: _Optional[int] = ..., replies_late: _Optional[int] = ..., replies_superseded: _Optional[int] = ..., staleness_frames: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., decision_overhead_ms: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStats, _Mapping]]] = ..., episodes: _Optional[int] = ..., last_episode_return: _Optional[float] = ..., mean_episode_return: _Optional[float] = ..., transitions_published: _Optional[int] = ..., transitions_dropped: _Optional[int] = ..., transitions_queued: _Optional[int] = ..., replica_count: _Optional[int] = ..., episode_frames: _Optional[int] = ..., scheduler: _Optional[str] = ..., scheduler_period_ms: _Optional[float] = ..., scheduler_spacing_ms: _Optional[float] = ..., scheduler_turns_passed: _Optional[int] = ..., scheduler_slots_waited: _Optional[int] = ..., requests_resent: _Optional[int] = ..., lead_frames: _Optional[int] = ..., interaction: _Optional[str] = ..., sequential_cycles: _Optional[int] = ..., train_ms: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., train_failures: _Optional[int] = ..., cycle_ms: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., staleness_frames_histogram: _Optional[_Iterable[int]] = ..., recent_episode_returns: _Optional[_Iterable[float]] = ..., unknown_variable_frames: _Optional[int] = ..., unknown_variable_truncations: _Optional[int] = ..., variables: _Optional[_Iterable[_Union[ProfileVariable, _Mapping]]] = ..., reward_terms: _Optional[_Iterable[_Union[RewardTermStats, _Mapping]]] = ..., last_episode_end_rules: _Optional[_Iterable[str]] = ...) -> None: ...

class ProfileVariable(_message.Message):
    __slots__ = ("name", "value", "known")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    known: bool
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., known: _Optional[bool] = ...) -> None: ...

class RewardTermStats(_message.Message):
    __slots__ = ("label", "last_frame_reward", "episode_reward")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_REWARD_FIELD_NUMBER: _ClassVar[int]
    EPISODE_REWARD_FIELD_NUMBER: _ClassVar[int]
    label: str
    last_frame_reward: float
    episode_reward: float
    def __init__(self, label: _Optional[str] = ..., last_frame_reward: _Optional[float] = ..., episode_reward: _Optional[float] = ...) -> None: ...
