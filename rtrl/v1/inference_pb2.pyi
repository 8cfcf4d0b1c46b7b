from rtrl.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActRequest(_message.Message):
    __slots__ = ("observation", "gateway_id", "frame_index", "action_count")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    ACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    observation: _common_pb2.Tensor
    gateway_id: str
    frame_index: int
    action_count: int
    def __init__(self, observation: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., gateway_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., action_count: _Optional[int] = ...) -> None: ...

class ActResponse(_message.Message):
    __slots__ = ("action", "behaviour_log_prob", "action_values", "checkpoint_version", "explored", "epsilon", "inference_ms", "frame_index", "batch_size")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_LOG_PROB_FIELD_NUMBER: _ClassVar[int]
    ACTION_VALUES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    action: int
    behaviour_log_prob: float
    action_values: _containers.RepeatedScalarFieldContainer[float]
    checkpoint_version: int
    explored: bool
    epsilon: float
    inference_ms: float
    frame_index: int
    batch_size: int
    def __init__(self, action: _Optional[int] = ..., behaviour_log_prob: _Optional[float] = ..., action_values: _Optional[_Iterable[float]] = ..., checkpoint_version: _Optional[int] = ..., explored: _Optional[bool] = ..., epsilon: _Optional[float] = ..., inference_ms: _Optional[float] = ..., frame_index: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ActStreamRequest(_message.Message):
    __slots__ = ("request", "timeout_ms")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    request: ActRequest
    timeout_ms: float
    def __init__(self, request: _Optional[_Union[ActRequest, _Mapping]] = ..., timeout_ms: _Optional[float] = ...) -> None: ...

class ActStreamResponse(_message.Message):
    __slots__ = ("response", "error_code", "error_message")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    response: ActResponse
    error_code: int
    error_message: str
    def __init__(self, response: _Optional[_Union[ActResponse, _Mapping]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class InferenceServiceGetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InferenceServiceGetStatusResponse(_message.Message):
    __slots__ = ("replica_id", "checkpoint_version", "model_arch", "parameter_count", "requests_answered", "requests_refused_deadline", "requests_invalid", "in_flight", "inference_ms", "checkpoints_loaded", "checkpoint_load_failures", "epsilon", "observation_shape", "action_count", "batch_size", "max_batch_size", "max_wait_ms", "advertised_address", "requests_per_second", "latency_ms", "model_width", "requests_answered_late", "expected_forward_ms", "batches_run", "registered", "checkpoint_load_last_error", "open_streams", "max_open_streams", "act_socket_port")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARCH_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_REFUSED_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_INVALID_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_LOADED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_LOAD_FAILURES_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    ADVERTISED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_ANSWERED_LATE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FORWARD_MS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_RUN_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_LOAD_LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    ACT_SOCKET_PORT_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    checkpoint_version: int
    model_arch: str
    parameter_count: int
    requests_answered: int
    requests_refused_deadline: int
    requests_invalid: int
    in_flight: int
    inference_ms: _common_pb2.Distribution
    checkpoints_loaded: int
    checkpoint_load_failures: int
    epsilon: float
    observation_shape: _containers.RepeatedScalarFieldContainer[int]
    action_count: int
    batch_size: _common_pb2.Distribution
    max_batch_size: int
    max_wait_ms: float
    advertised_address: str
    requests_per_second: float
    latency_ms: _common_pb2.Distribution
    model_width: int
    requests_answered_late: int
    expected_forward_ms: float
    batches_run: int
    registered: bool
    checkpoint_load_last_error: str
    open_streams: int
    max_open_streams: int
    act_socket_port: int
    def __init__(self, replica_id: _Optional[str] = ..., checkpoint_version: _Optional[int] = ..., model_arch: _Optional[str] = ..., parameter_count: _Optional[int] = ..., requests_answered: _Optional[int] = ..., requests_refused_deadline: _Optional[int] = ..., requests_invalid: _Optional[int] = ..., in_flight: _Optional[int] = ..., inference_ms: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., checkpoints_loaded: _Optional[int] = ..., checkpoint_load_failures: _Optional[int] = ..., epsilon: _Optional[float] = ..., observation_shape: _Optional[_Iterable[int]] = ..., action_count: _Optional[int] = ..., batch_size: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., max_batch_size: _Optional[int] = ..., max_wait_ms: _Optional[float] = ..., advertised_address: _Optional[str] = ..., requests_per_second: _Optional[float] = ..., latency_ms: _Optional[_Union[_common_pb2.Distribution, _Mapping]] = ..., model_width: _Optional[int] = ..., requests_answered_late: _Optional[int] = ..., expected_forward_ms: _Optional[float] = ..., batches_run: _Optional[int] = ..., registered: _Optional[bool] = ..., checkpoint_load_last_error: _Optional[str] = ..., open_streams: _Optional[int] = ..., max_open_streams: _Optional[int] = ..., act_socket_port: _Optional[int] = ...) -> None: ...
