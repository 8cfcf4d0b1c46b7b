"""Conversion between numpy arrays and rtrl.v1.Tensor, validating what arrives over the wire."""

from __future__ import annotations

import math

import numpy as np

from rtrl.grpc_util import InvalidArgument
from rtrl.v1 import common_pb2

_TO_DTYPE: dict[common_pb2.DType, np.dtype] = {
    common_pb2.D_TYPE_UINT8: np.dtype(np.uint8),
    common_pb2.D_TYPE_FLOAT32: np.dtype(np.float32),
}
_FROM_DTYPE = {dtype: code for code, dtype in _TO_DTYPE.items()}


def dtype_code(dtype: np.dtype) -> common_pb2.DType:
    return _FROM_DTYPE[np.dtype(dtype)]


def to_proto(array: np.ndarray) -> common_pb2.Tensor:
    array = np.ascontiguousarray(array)
    if array.dtype not in _FROM_DTYPE:
        raise ValueError(f"dtype {array.dtype} cannot be sent; use uint8 or float32")
    return common_pb2.Tensor(shape=list(array.shape), dtype=_FROM_DTYPE[array.dtype], data=array.tobytes())


def from_proto(tensor: common_pb2.Tensor, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Returns a read-only array view of `tensor`; raises InvalidArgument with what to fix."""
    dtype = _TO_DTYPE.get(tensor.dtype)
    if dtype is None:
        name = common_pb2.DType.Name(tensor.dtype) if tensor.dtype in common_pb2.DType.values() else tensor.dtype
        raise InvalidArgument(f"observation dtype {name} is not supported; send D_TYPE_UINT8 or D_TYPE_FLOAT32")
    shape = tuple(tensor.shape)
    if expected_shape is not None and shape != tuple(expected_shape):
        raise InvalidArgument(
            f"observation shape {list(shape)} does not match the model's {list(expected_shape)}; "
            "send observations shaped as the gateway's GetSpec says"
        )
    size = math.prod(shape) * dtype.itemsize
    data = tensor.data  # a copy at each read
    if len(data) != size:
        raise InvalidArgument(f"observation data has {len(data)} bytes but shape {list(shape)} of {dtype} needs {size}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)
