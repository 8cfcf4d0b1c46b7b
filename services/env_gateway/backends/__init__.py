"""Game backends behind one small protocol, and `make_backend` that picks one from RTRL_ENV."""

from services.env_gateway.backends.base import Backend, BackendError
from services.env_gateway.backends.gymnasium import GymnasiumBackend, make_backend

__all__ = ["Backend", "BackendError", "GymnasiumBackend", "make_backend"]
