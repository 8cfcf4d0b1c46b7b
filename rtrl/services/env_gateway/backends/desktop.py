"""Backend for a live game in a desktop window: find the window, capture it, send keys, read memory.

`RTRL_ENV=desktop:<profile>` plays a game that runs on its own (SuperTux, or anything with a window):
the gateway's clock calls `step(action)` once per frame, which makes the action's keys the held keys
(pressing the newly held ones, releasing the others), captures the window's client area as it is at
that moment (the game does not wait for us: a capture is simply the latest picture) and reads the
profile's variables from the game's memory. Rewards and episode ends are not computed here: the
profile's rules wrap this backend (`game_rules.with_rules`).

The OS-independent part lives here; the platform parts implement the small protocols below:
`desktop_linux` (X11 through python-xlib and XTest, /proc/<pid>/mem) and `desktop_windows` (win32
through pywin32, pydirectinput, pymem). Screen capture is mss on both.

Keys never stay stuck: a step applying the gateway's fallback action (which must press no key)
releases every held key, and `keyguard.KeyGuard` releases them on close, at exit and, through a
guardian process, when the gateway dies.

Errors (all `BackendError`s, so the gateway stops with their sentence): `WindowNotFoundError` (no
window matches the profile's title/process: the game must be running, and on Linux be on DISPLAY),
`MemoryAccessError` (the process's memory cannot be opened or a module is missing: the message names
the pid and the permission needed) and `InputError` (a key the platform cannot send). A pointer chain
that cannot be followed during play (a level is loading, the player object is being rebuilt) is not
an error: the variable is unknown (NaN) on that frame, which the rules treat as such (game_rules), and
`failed_reads` counts it.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from rtrl.config import PREFIX, SettingsError
from rtrl.services.env_gateway.backends.base import BackendError
from rtrl.services.env_gateway.backends.keyguard import GuardianError, KeyGuard, KeyInjector
from rtrl.services.env_gateway.profiles import GameProfile, VariableSpec

if TYPE_CHECKING:
    from rtrl.services.env_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# The desktop game renders at its own pace; the clock samples it at this rate unless the profile says.
DEFAULT_FRAME_RATE_HZ = 60.0
# How often the window's position is looked up again (it may be moved) and its existence checked.
GEOMETRY_REFRESH_S = 0.5
# At most one warning per variable in this interval when its pointer chain cannot be followed.
READ_WARNING_INTERVAL_S = 10.0


class DesktopError(BackendError):
    """The desktop game cannot be played; the message says what to do."""


class WindowNotFoundError(DesktopError):
    """No window matches the profile's title or process (the game is not running, or not on this display)."""


class MemoryAccessError(DesktopError):
    """The game's memory cannot be read at all (permissions, a missing module, the process exited)."""


class MemoryReadError(DesktopError):
    """One read failed (an address that is not mapped right now); the caller decides whether that is fatal."""


class InputError(DesktopError):
    """A key cannot be sent to the game."""


@dataclass(frozen=True)
class ScreenRect:
    """A rectangle in screen pixels (what mss grabs)."""

    left: int
    top: int
    width: int
    height: int

    def clipped_to(self, bounds: ScreenRect) -> ScreenRect | None:
        """The part of this rectangle inside `bounds`, or None when nothing is."""
        left, top = max(self.left, bounds.left), max(self.top, bounds.top)
        right = min(self.left + self.width, bounds.left + bounds.width)
        bottom = min(self.top + self.height, bounds.top + bounds.height)
        if right <= left or bottom <= top:
            return None
        return ScreenRect(left, top, right - left, bottom - top)


class GameWindow(Protocol):
    """The game's top-level window."""

    @property
    def title(self) -> str: ...

    @property
    def pid(self) -> int | None:
        """The process that owns the window, when the platform can tell."""
        ...

    def rect(self, capture: str) -> ScreenRect:
        """Screen rectangle of the client area ("client") or of the whole window with its frame ("window")."""
        ...

    def exists(self) -> bool: ...

    def focus(self) -> None:
        """Gives the window the keyboard focus (injected keys go to the focused window)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class MemoryRegion:
    """One mapped range of a process's address space, as `rtrl scan` sees it."""

    start: int
    end: int
    writable: bool
    module: str | None
    """The executable or library whose image holds this range (its static data), None for heap and the like."""
    name: str = ""
    """What the OS calls the mapping, for messages: a file, [heap], [stack], or "" when anonymous."""

    @property
    def size(self) -> int:
        return self.end - self.start


class ProcessMemory(Protocol):
    """Reads from the game process's memory."""

    pid: int

    def module_base(self, module: str) -> int:
        """Load address of `module` (an executable or library name); raises MemoryAccessError when absent."""
        ...

    def pointer_size(self) -> int:
        """Width of the process's pointers in bytes (4 or 8)."""
        ...

    def read(self, address: int, size: int) -> bytes:
        """`size` bytes at `address`; raises MemoryReadError when they are not readable."""
        ...

    def regions(self) -> list[MemoryRegion]:
        """The readable mapped ranges, in address order (what a memory scan reads)."""
        ...

    def close(self) -> None: ...


class Platform(Protocol):
    """What an operating system provides to the desktop backend."""

    name: str

    def find_window(self, title: str | None, process: str | None) -> GameWindow:
        """The game's window; raises WindowNotFoundError saying what was looked for."""
        ...

    def process_name(self, pid: int) -> str | None:
        """The executable name of process `pid`, None when no such process runs."""
        ...

    def find_processes(self, name: str) -> list[int]:
        """The pids of running processes with that executable name (with or without .exe)."""
        ...

    def open_memory(self, pid: int) -> ProcessMemory:
        """Opens the process for reading; raises MemoryAccessError naming the permission needed."""
        ...

    def open_keys(self, window: GameWindow) -> KeyInjector: ...

    def open_capture(self) -> Any:
        """An mss screenshot object for this platform's screen."""
        ...

    def screen_rect(self, capture: Any) -> ScreenRect:
        """The whole virtual screen (all monitors), to clip captures to."""
        ...


def current_platform() -> Platform:
    """The platform part for the OS the gateway runs on."""
    # Imported here: each platform part imports modules that exist only on its own OS.
    if sys.platform == "win32":
        from rtrl.services.env_gateway.backends.desktop_windows import WindowsPlatform

        return WindowsPlatform()
    if sys.platform.startswith("linux"):
        from rtrl.services.env_gateway.backends.desktop_linux import LinuxPlatform

        return LinuxPlatform()
    raise DesktopError(f"the desktop backend runs on Linux (X11) and Windows, not on {sys.platform}.")


# -- memory ----------------------------------------------------------------------------------------


def variable_address(memory: ProcessMemory, spec: VariableSpec, module_bases: Mapping[str, int]) -> int:
    """Follows the variable's pointer chain: base(module) + p0, then read pointer + p for each further p."""
    if spec.module is None:
        assert spec.address is not None, f"variable {spec.name} has neither address nor module"
        return spec.address
    pointer_size = spec.pointer_size or memory.pointer_size()
    address = module_bases[spec.module] + spec.pointers[0]
    for offset in spec.pointers[1:]:
        raw = memory.read(address, pointer_size)
        pointer = int.from_bytes(raw, "little")
        if pointer == 0:
            raise MemoryReadError(f"null pointer at 0x{address:x} in the chain of {spec.name}")
        address = pointer + offset
    return address


class VariableReader:
    """Reads every profile variable of one frame; a chain that breaks makes the variable unknown (NaN) for the frame."""

    def __init__(self, memory: ProcessMemory, variables: Mapping[str, VariableSpec]) -> None:
        self.memory = memory
        self.variables = dict(variables)
        # Module bases do not move while the process lives; looking them up once also fails early.
        self.module_bases = {
            spec.module: memory.module_base(spec.module) for spec in self.variables.values() if spec.module
        }
        self.values: dict[str, float] = {name: math.nan for name in self.variables}
        self.failed_reads = 0
        self._warned_at: dict[str, float] = {}

    def read(self, spec: VariableSpec) -> float:
        address = variable_address(self.memory, spec, self.module_bases)
        return spec.decode(self.memory.read(address, spec.size))

    def read_all(self) -> dict[str, float]:
        for name, spec in self.variables.items():
            try:
                self.values[name] = self.read(spec)
            except MemoryReadError as error:
                # A stale value would pay rewards for a position the game no longer has (a level loading).
                self.values[name] = math.nan
                self.failed_reads += 1
                now = time.monotonic()
                if now - self._warned_at.get(name, -math.inf) >= READ_WARNING_INTERVAL_S:
                    self._warned_at[name] = now
                    log.warning("variable %s is unknown while its chain cannot be followed: %s", name, error)
        return dict(self.values)


# -- capture ---------------------------------------------------------------------------------------


class WindowCapture:
    """Grabs the window's rectangle with mss as an RGB array, following the window when it moves."""

    def __init__(self, platform: Platform, window: GameWindow, capture: str) -> None:
        self._platform = platform
        self._window = window
        self._capture = capture
        # mss first: on Windows it makes the process DPI-aware, which changes the rectangles win32 reports.
        self._mss = platform.open_capture()
        self._mss_thread = threading.get_ident()
        self._rect: ScreenRect | None = None
        self._refreshed_at = -math.inf
        self._last: np.ndarray | None = None
        self.offscreen_frames = 0

    def refresh(self) -> None:
        """Looks the window's rectangle up again; raises DesktopError when the window has closed."""
        if not self._window.exists():
            raise DesktopError(
                f"the game window {self._window.title!r} has closed; start the game again and restart the gateway."
            )
        rect = self._window.rect(self._capture)
        self._rect = rect.clipped_to(self._platform.screen_rect(self._mss))
        self._refreshed_at = time.monotonic()

    @property
    def rect(self) -> ScreenRect | None:
        return self._rect

    def grab(self) -> np.ndarray:
        if time.monotonic() - self._refreshed_at >= GEOMETRY_REFRESH_S:
            self.refresh()
        rect = self._rect
        if rect is None:
            # Minimised or moved off the screen: there is nothing to see, so the last picture stands.
            self.offscreen_frames += 1
            if self._last is None:
                raise DesktopError(
                    f"the game window {self._window.title!r} is not on the screen (minimised or moved off it); "
                    "restore it so that it can be captured."
                )
            return self._last.copy()
        if threading.get_ident() != self._mss_thread:
            # Windows screen capture holds GDI device contexts, which belong to the thread that made them:
            # the backend is built on one thread and stepped on the clock's, so capture is reopened there.
            self._mss.close()
            self._mss = self._platform.open_capture()
            self._mss_thread = threading.get_ident()
        shot = self._mss.grab({"left": rect.left, "top": rect.top, "width": rect.width, "height": rect.height})
        bgra = np.frombuffer(shot.raw, dtype=np.uint8).reshape(shot.height, shot.width, 4)
        frame = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)  # a new array, which the caller may keep
        self._last = frame
        return frame

    def close(self) -> None:
        self._mss.close()


# -- the backend -----------------------------------------------------------------------------------


class DesktopBackend:
    """A game window driven through the platform's input, screen and memory APIs (see module docstring)."""

    def __init__(
        self,
        profile: GameProfile,
        platform: Platform | None = None,
        *,
        fallback_action: int | None = None,
        guardian: bool = True,
    ) -> None:
        if profile.window is None:
            raise SettingsError(f"profile {profile.label} has no [window] table; desktop games need one.")
        self.profile = profile
        self.platform = platform if platform is not None else current_platform()
        self._actions = profile.actions.inputs
        self._fallback_action = profile.actions.fallback if fallback_action is None else fallback_action
        if not 0 <= self._fallback_action < len(self._actions):
            raise SettingsError(
                f"fallback action {self._fallback_action} is out of range for {profile.label}, which has "
                f"{len(self._actions)} actions; set {PREFIX}FALLBACK_ACTION between 0 and {len(self._actions) - 1}."
            )
        if self._actions[self._fallback_action]:
            raise SettingsError(
                f"fallback action {self._fallback_action} of {profile.label} holds keys "
                f"{list(self._actions[self._fallback_action])}; a desktop game's fallback must press no key, so "
                f"that a step without a fresh action releases them all. Set actions.fallback or "
                f"{PREFIX}FALLBACK_ACTION to an action whose keys are []."
            )
        self._frame_rate_hz = profile.frame_rate_hz or DEFAULT_FRAME_RATE_HZ

        self.window = self.platform.find_window(profile.window.title, profile.window.process)
        self._closers: list[Any] = [self.window]
        try:
            self.capture = WindowCapture(self.platform, self.window, profile.window.capture)
            self._closers.append(self.capture)
            self.memory: ProcessMemory | None = None
            self.reader: VariableReader | None = None
            if profile.variables:
                if self.window.pid is None:
                    raise MemoryAccessError(
                        f"the game window {self.window.title!r} does not say which process owns it, so its memory "
                        "cannot be read; set window.process in the profile to the game's executable name."
                    )
                self.memory = self.platform.open_memory(self.window.pid)
                self._closers.append(self.memory)
                self.reader = VariableReader(self.memory, profile.variables)
            injector = self.platform.open_keys(self.window)
            self._native = {key: injector.native_key(key) for key in self._all_profile_keys(profile)}
            try:
                self.keys = KeyGuard(injector, self._native.values(), guardian=guardian)
            except GuardianError as error:
                injector.close()
                raise DesktopError(str(error)) from error
            except BaseException:
                injector.close()
                raise
            self._closers.append(self.keys)
            self.capture.refresh()
            self.window.focus()
        except BaseException:
            self._close_parts()
            raise
        self._variables: dict[str, float] = {}
        self._paused = False
        self._last_frame: np.ndarray | None = None
        log.info(
            "desktop game %r: window %r (pid %s) at %s, %d actions, %d variables, %.0f fps",
            profile.game.name,
            self.window.title,
            self.window.pid,
            self.capture.rect,
            len(self._actions),
            len(profile.variables),
            self._frame_rate_hz,
        )

    @staticmethod
    def _all_profile_keys(profile: GameProfile) -> list[str]:
        keys = {key for combo in profile.actions.inputs for key in combo}
        keys |= {key for entry in profile.reset.keys if not isinstance(entry, int) for key in entry}
        if profile.actions.pause_key:
            keys.add(profile.actions.pause_key)
        return sorted(keys)

    # -- Backend protocol ------------------------------------------------------------------------

    @property
    def action_count(self) -> int:
        return len(self._actions)

    @property
    def action_meanings(self) -> tuple[str, ...]:
        return self.profile.actions.names

    @property
    def native_frame_rate_hz(self) -> float:
        return self._frame_rate_hz

    observation_kind = "pixels"
    state_size = 0

    @property
    def failed_reads(self) -> int:
        """Variable reads whose pointer chain could not be followed (the value was kept)."""
        return self.reader.failed_reads if self.reader is not None else 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Releases every key, runs the profile's reset keys and waits, then returns the current picture.

        `seed` is ignored: a live game cannot be seeded from outside.
        """
        del seed
        self.keys.release_all()
        self.capture.refresh()
        self.window.focus()
        procedure = self.profile.reset
        frame_s = 1.0 / self._frame_rate_hz
        for entry in procedure.keys:
            if isinstance(entry, int):
                time.sleep(entry * frame_s)
                continue
            self.keys.hold([self._native[key] for key in entry])
            time.sleep(procedure.press_frames * frame_s)
            self.keys.release_all()
        if procedure.wait_frames:
            time.sleep(procedure.wait_frames * frame_s)
        return self._observe()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """Holds `action`'s keys (a fallback step releases them all), then captures and reads the frame."""
        if action == self._fallback_action:
            self.keys.release_all()
        else:
            self.keys.hold([self._native[key] for key in self._actions[action]])
        return self._observe(), 0.0, False, False

    def render(self) -> np.ndarray:
        assert self._last_frame is not None, "render() shows the frame last produced: reset the backend first"
        return self._last_frame

    def read_variables(self) -> dict[str, float]:
        return dict(self._variables)

    def close(self) -> None:
        self._close_parts()

    # -- beyond the protocol ---------------------------------------------------------------------

    def release_all(self) -> None:
        """Releases every held key (what a fallback step does)."""
        self.keys.release_all()

    def toggle_pause(self) -> None:
        """Taps the profile's pause key (pause when running, resume when paused), holding nothing else."""
        pause_key = self.profile.actions.pause_key
        if pause_key is None:
            raise SettingsError(f"profile {self.profile.label} has no actions.pause_key; add one to pause the game.")
        self.keys.hold([self._native[pause_key]])
        time.sleep(2.0 / self._frame_rate_hz)  # a game polls its keys once a frame: a shorter tap may be missed
        self.keys.release_all()
        self._paused = not self._paused

    @property
    def paused(self) -> bool:
        """Whether this backend's own taps of the pause key left the game paused."""
        return self._paused

    # -- internals -------------------------------------------------------------------------------

    def _observe(self) -> np.ndarray:
        frame = self.capture.grab()
        if self.reader is not None:
            self._variables = self.reader.read_all()
        self._last_frame = frame
        return frame

    def _close_parts(self) -> None:
        # Keys first: whatever else fails on the way out, nothing may stay pressed.
        for part in sorted(self._closers, key=lambda p: not isinstance(p, KeyGuard)):
            try:
                part.close()
            except Exception:
                log.exception("closing %s of the desktop backend failed", type(part).__name__)
        self._closers.clear()


def create_backend(profile: GameProfile, settings: GatewaySettings) -> DesktopBackend:
    """The backend `RTRL_ENV=desktop:<profile>` names (called by `make_backend`)."""
    return DesktopBackend(profile, fallback_action=settings.fallback_action)
