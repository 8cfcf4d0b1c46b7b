"""Game backends behind one small protocol, and `make_backend` that picks one from RTRL_ENV.

"ale:" and "gym:" run in the gymnasium backend. "pyboy:" and "desktop:" run with a game profile
(settings.profile): each backend module exposes `create_backend(profile, settings) -> Backend`, and
the profile's rewards and termination rules are applied around it (game_rules.RulesBackend). The
emulator and desktop modules are imported only when used, so a gateway running ALE never loads them.
"""

from __future__ import annotations

import importlib

from rtrl.config import PREFIX, SettingsError
from rtrl.extras import missing_extra
from rtrl.services.env_gateway.backends.base import Backend, BackendError
from rtrl.services.env_gateway.backends.gymnasium import GymnasiumBackend, make_gymnasium_backend
from rtrl.services.env_gateway.settings import GatewaySettings

__all__ = ["Backend", "BackendError", "GymnasiumBackend", "make_backend"]


def make_backend(settings: GatewaySettings) -> Backend:
    """Creates the backend RTRL_ENV names; raises SettingsError when it cannot run."""
    # Imported here: game_rules imports this package's base module.
    from rtrl.services.env_gateway.game_rules import with_rules

    kind = settings.env.kind
    if kind in ("ale", "gym"):
        return make_gymnasium_backend(settings)
    profile = settings.profile
    if profile is None:
        raise SettingsError(f"{PREFIX}ENV={settings.env.spec!r} needs a game profile; set {PREFIX}PROFILE.")
    try:
        module = importlib.import_module(f"rtrl.services.env_gateway.backends.{kind}")
    except ModuleNotFoundError as error:
        message = missing_extra(error, f"{PREFIX}ENV={settings.env.spec!r}")
        if message is not None:
            raise SettingsError(message) from error
        if error.name != f"rtrl.services.env_gateway.backends.{kind}":
            raise
        raise SettingsError(
            f"{PREFIX}ENV={settings.env.spec!r} needs the {kind} backend, which this build does not include; "
            "set it to another game."
        ) from error
    backend: Backend = module.create_backend(profile, settings)
    # A desktop game runs on its own, so its time caps and stagnation windows are wall-clock seconds.
    return with_rules(
        backend, profile, realtime=kind == "desktop", unknown_timeout_s=settings.unknown_variable_timeout_s
    )
