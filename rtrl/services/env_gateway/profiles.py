"""Game profiles: TOML files describing how the gateway plays one game (schema in docs/profiles.md).

`load_profile` reads a shipped profile by name or any `.toml` path into frozen dataclasses and
validates every field, so a bad profile stops the gateway at start. Every problem is a
`ProfileError` (a `SettingsError`) reading "profile <file>: <dotted.field> is <value>; expected <what>".
"""

from __future__ import annotations

import math
import re
import struct
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from rtrl.config import PREFIX, SettingsError

SHIPPED_DIR = Path(__file__).with_name("profiles")
GAME_BOY_FRAME_RATE_HZ = 59.7275
PYBOY_BUTTONS = ("a", "b", "start", "select", "up", "down", "left", "right")
BACKENDS = ("pyboy", "desktop")
NUMBER_TYPES = {
    "u8": "B",
    "u16": "H",
    "u32": "I",
    "u64": "Q",
    "i8": "b",
    "i16": "h",
    "i32": "i",
    "i64": "q",
    "f32": "f",
    "f64": "d",
}
"""The variable types that are plain numbers, with their struct codes (also what `rtrl scan` scans for)."""
VARIABLE_TYPES = (*NUMBER_TYPES, "bcd")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEX = re.compile(r"[0-9a-fA-F]+\Z")
MAX_BCD_BYTES = 8
SCREEN_KINDS = ("scroll", "screen_change")
# Screen signals shrink their region to about this width before measuring it (docs/profiles.md has the costs).
DEFAULT_SCREEN_WIDTH_PX = 80
# Phase correlation peaks below this are noise: unrelated pictures give about 0.05, a real shift 0.8 or more.
DEFAULT_MIN_RESPONSE = 0.15
DEFAULT_TEMPLATE_THRESHOLD = 0.8
# Smaller regions give phase correlation too few pixels to find a shift in.
MIN_SCREEN_REGION_PX = 16
# A template smaller than this (after its downscale) matches noise.
MIN_TEMPLATE_PX = 3

Outcome = Literal["terminated", "truncated", "none"]


class ProfileError(SettingsError):
    """A profile is missing or has a field the gateway cannot use; the message names the field."""


# -- the profile's parts ------------------------------------------------------------------------


@dataclass(frozen=True)
class GameSection:
    name: str
    backend: str
    """"pyboy" or "desktop"."""
    frame_rate_hz: float | None
    """Native frame rate; None means the backend's default (59.7275 for pyboy)."""


@dataclass(frozen=True)
class RomSection:
    sha256: tuple[str, ...]
    """Accepted lower-case SHA-256 digests; empty with `any_rom`."""
    sha1: tuple[str, ...]
    any_rom: bool
    """sha256 = "any": no check (development profiles only)."""
    titles: tuple[str, ...]
    game_wrapper: bool


@dataclass(frozen=True)
class WindowSection:
    title: str | None
    process: str | None
    capture: str


@dataclass(frozen=True)
class ActionSet:
    inputs: tuple[tuple[str, ...], ...]
    """Buttons (pyboy) or keys (desktop) held by each action."""
    names: tuple[str, ...]
    fallback: int
    pause_key: str | None

    @property
    def count(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class Preprocess:
    width: int = 84
    height: int = 84
    grayscale: bool = True
    frame_stack: int = 4
    frame_skip: int = 4


@dataclass(frozen=True)
class VariableSpec:
    name: str
    address: int | None = None
    module: str | None = None
    pointers: tuple[int, ...] = ()
    pointer_size: int | None = None
    wrapper: str | None = None
    type: str = "u8"
    length: int = 0
    """Bytes of packed BCD (type "bcd" only)."""
    endianness: str = "little"

    @property
    def size(self) -> int:
        """Bytes to read at the address."""
        if self.type == "bcd":
            return self.length
        return struct.calcsize(NUMBER_TYPES[self.type])

    def decode(self, raw: bytes | bytearray | list[int]) -> float:
        """The value of `size` bytes read at the variable's address."""
        data = bytes(raw)
        if self.type == "bcd":
            if self.endianness == "little":
                data = data[::-1]
            value = 0
            for byte in data:
                value = value * 100 + (byte >> 4) * 10 + (byte & 0x0F)
            return float(value)
        order = "<" if self.endianness == "little" else ">"
        return float(struct.unpack(order + NUMBER_TYPES[self.type], data)[0])


@dataclass(frozen=True)
class Region:
    """A rectangle of the captured frame, in its pixels."""

    x: int
    y: int
    width: int
    height: int

    def fits(self, frame_width: int, frame_height: int) -> bool:
        """Whether the whole rectangle lies inside a frame of this size."""
        return self.x + self.width <= frame_width and self.y + self.height <= frame_height

    def __str__(self) -> str:
        return f"[{self.x}, {self.y}, {self.width}, {self.height}]"


@dataclass(frozen=True)
class ScrollSignal:
    """`[screen.<name>] kind = "scroll"`: the camera's shift since the episode's reset, from the picture."""

    name: str
    region: Region | None = None
    """None: the whole frame."""
    width: int = DEFAULT_SCREEN_WIDTH_PX
    """The region is shrunk by a whole factor to about this many pixels across before it is correlated."""
    min_response: float = DEFAULT_MIN_RESPONSE
    """A correlation peak lower than this makes the frame's shift unknown."""
    max_shift_px: float | None = None
    """A larger jump from one frame to the next is a scene cut (unknown); None: a quarter of the region."""
    kind: str = "scroll"

    @property
    def variables(self) -> tuple[str, ...]:
        return (f"{self.name}_x", f"{self.name}_y")


@dataclass(frozen=True)
class ScreenChangeSignal:
    """`[screen.<name>] kind = "screen_change"`: how much the picture has changed since the episode's reset."""

    name: str
    region: Region | None = None
    width: int = DEFAULT_SCREEN_WIDTH_PX
    min_change: float = 0.0
    """A frame that changed less than this (mean grey levels) adds nothing."""
    kind: str = "screen_change"

    @property
    def variables(self) -> tuple[str, ...]:
        return (self.name,)


ScreenSignal = ScrollSignal | ScreenChangeSignal


@dataclass(frozen=True)
class TemplateMatch:
    """An image looked for in a region of every captured frame, for a `template` reward or rule."""

    signal: str
    """Where the profile defines it ("termination[1]"); also the key of its match score among the frame's values."""
    image: Path
    pixels: np.ndarray = field(compare=False, repr=False)
    """The image in grey, already shrunk by `downscale`."""
    region: Region | None = None
    """None: the whole frame."""
    threshold: float = DEFAULT_TEMPLATE_THRESHOLD
    """Normalized correlation (TM_CCOEFF_NORMED, -1..1) at which the image counts as shown."""
    downscale: int = 1
    """Region and image are shrunk by this whole factor before matching (faster, coarser)."""


@dataclass(frozen=True)
class DeltaReward:
    variable: str
    scale: float = 1.0
    kind: str = "delta"


@dataclass(frozen=True)
class MilestoneReward:
    variable: str
    every_px: float
    reward: float = 1.0
    kind: str = "milestone"


@dataclass(frozen=True)
class FaintReward:
    variables: tuple[str, ...]
    reward: float
    kind: str = "faint"


@dataclass(frozen=True)
class DeathZoneReward:
    variable_x: str
    radius_px: float
    penalty: float
    repeat_multiplier: float = 1.0
    kind: str = "death_zone"


@dataclass(frozen=True)
class ConstantReward:
    reward: float
    kind: str = "constant"


@dataclass(frozen=True)
class TemplateReward:
    match: TemplateMatch
    reward: float = 1.0
    kind: str = "template"

    @property
    def variable(self) -> str:
        """The match score the rules read."""
        return self.match.signal


RewardTerm = DeltaReward | MilestoneReward | FaintReward | DeathZoneReward | ConstantReward | TemplateReward


@dataclass(frozen=True)
class EqualsRule:
    variable: str
    value: float
    negate: bool
    """True for kind "not_equals"."""
    outcome: Outcome = "terminated"

    @property
    def kind(self) -> str:
        return "not_equals" if self.negate else "equals"


@dataclass(frozen=True)
class ThresholdRule:
    """The variable is past a bound: above it (kind "above"), or below it (kind "below")."""

    variable: str
    value: float
    below: bool
    outcome: Outcome = "terminated"

    @property
    def kind(self) -> str:
        return "below" if self.below else "above"


@dataclass(frozen=True)
class AllZeroRule:
    variables: tuple[str, ...]
    outcome: Outcome = "terminated"
    kind: str = "all_zero"


@dataclass(frozen=True)
class XTeleportRule:
    variable: str
    relative_drop: float
    absolute_drop_px: float
    outcome: Outcome = "terminated"
    kind: str = "x_teleport"


@dataclass(frozen=True)
class StagnationRule:
    variable: str
    epsilon_px: float
    window_s: float
    outcome: Outcome = "truncated"
    kind: str = "stagnation"


@dataclass(frozen=True)
class TimeCapRule:
    seconds: float
    outcome: Outcome = "truncated"
    kind: str = "time_cap"


@dataclass(frozen=True)
class TemplateRule:
    match: TemplateMatch
    outcome: Outcome = "terminated"
    kind: str = "template"

    @property
    def variable(self) -> str:
        """The match score the rules read."""
        return self.match.signal


TerminationRule = EqualsRule | ThresholdRule | AllZeroRule | XTeleportRule | StagnationRule | TimeCapRule | TemplateRule


@dataclass(frozen=True)
class ResetProcedure:
    savestate: Path | None = None
    """Absolute path (resolved against the profile's folder)."""
    keys: tuple[tuple[str, ...] | int, ...] = ()
    """Inputs held one after another (press_frames each); an int waits that many frames."""
    press_frames: int = 2
    wait_frames: int = 0


@dataclass(frozen=True)
class GameProfile:
    """One validated profile."""

    path: Path
    game: GameSection
    actions: ActionSet
    preprocess: Preprocess = field(default_factory=Preprocess)
    rom: RomSection | None = None
    window: WindowSection | None = None
    variables: Mapping[str, VariableSpec] = field(default_factory=dict)
    screen: Mapping[str, ScreenSignal] = field(default_factory=dict)
    rewards: tuple[RewardTerm, ...] = ()
    termination: tuple[TerminationRule, ...] = ()
    reset: ResetProcedure = field(default_factory=ResetProcedure)

    @property
    def label(self) -> str:
        """How errors name the file."""
        return self.path.name

    @property
    def frame_rate_hz(self) -> float | None:
        if self.game.frame_rate_hz is not None:
            return self.game.frame_rate_hz
        return GAME_BOY_FRAME_RATE_HZ if self.game.backend == "pyboy" else None

    @property
    def has_rules(self) -> bool:
        return bool(self.rewards or self.termination)

    @property
    def screen_variables(self) -> tuple[str, ...]:
        """The variables the [screen.<name>] signals add to the memory variables."""
        return tuple(name for signal in self.screen.values() for name in signal.variables)

    @property
    def templates(self) -> tuple[TemplateMatch, ...]:
        """The images the template rewards and rules look for."""
        items: tuple[RewardTerm | TerminationRule, ...] = (*self.rewards, *self.termination)
        return tuple(item.match for item in items if isinstance(item, TemplateReward | TemplateRule))

    def error(self, dotted: str, value: object, expected: str) -> ProfileError:
        """An error about one field, for checks that need the running backend (e.g. a missing savestate)."""
        return ProfileError(f"profile {self.label}: {dotted} is {_show(value)}; expected {expected}.")


# -- loading --------------------------------------------------------------------------------------


def shipped_profiles() -> tuple[str, ...]:
    """Names of the profiles shipped with the gateway."""
    return tuple(sorted(path.stem for path in SHIPPED_DIR.glob("*.toml")))


def expand_home(text: str | Path) -> Path:
    """`text` as a path with ~ and ~user expanded; ValueError with a sentence when that home is unknown."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise ValueError(
            f"{str(text)!r} starts with ~ but that user's home directory is unknown; write the full path"
        ) from None


def resolve_profile_path(ref: str | Path) -> Path:
    """A shipped profile's name ("tetris") or a path to a .toml file -> the file's path."""
    text = str(ref)
    if isinstance(ref, str) and "/" not in text and "\\" not in text and not text.endswith(".toml"):
        path = SHIPPED_DIR / f"{text}.toml"
    else:
        try:
            path = expand_home(text)
        except ValueError as error:
            raise ProfileError(f"profile {text!r}: {error}.") from None
    if not path.is_file():
        raise ProfileError(
            f"profile {text!r} not found (looked for {path}); set {PREFIX}PROFILE to a shipped profile "
            f"({', '.join(shipped_profiles())}) or a path to a .toml file."
        )
    return path.resolve()


def load_profile(ref: str | Path) -> GameProfile:
    """Loads and validates a profile; raises ProfileError naming the first bad field."""
    path = resolve_profile_path(ref)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"profile {path.name}: is not valid TOML ({error}); fix the file.") from error
    except OSError as error:
        raise ProfileError(f"profile {path.name}: cannot be read ({error}).") from error
    return parse_profile(data, path)


def profile_for_rom_title(title: str) -> str | None:
    """The shipped profile whose rom.titles lists `title` (a cartridge header title), if any."""
    wanted = title.strip().upper()
    for name in shipped_profiles():
        profile = load_profile(name)
        if profile.rom is not None and wanted in (t.upper() for t in profile.rom.titles):
            return name
    return None


def read_rom(path: str | Path) -> bytes:
    """The bytes of the user's ROM file; a clear SettingsError when it is missing (ROMs are never shipped)."""
    try:
        rom = expand_home(path)
    except ValueError as error:
        raise SettingsError(f"ROM file: {error}.") from None
    try:
        return rom.read_bytes()
    except FileNotFoundError:
        raise SettingsError(
            f"ROM file {rom} not found; set {PREFIX}ENV=pyboy:<path to your Game Boy ROM> "
            "(rtrl ships no ROMs: use a dump of a cartridge you own)."
        ) from None
    except OSError as error:
        raise SettingsError(
            f"ROM file {rom} cannot be read ({error.strerror}); check its path and permissions."
        ) from error


def rom_header_title(path: str | Path) -> str:
    """The cartridge title in the ROM header (0x134..0x143, up to the first NUL), e.g. "TETRIS"."""
    header = read_rom(path)[0x134:0x144]
    # On Game Boy Color cartridges the last byte is the CGB flag, not part of the title.
    if len(header) == 16 and header[15] & 0x80:
        header = header[:15]
    return header.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()


def parse_profile(data: Mapping[str, Any], path: Path) -> GameProfile:
    """Validates already-parsed TOML (`path` names the file in errors and anchors relative paths)."""
    root = _Table(data, "", path.name)
    root.only(
        "game", "rom", "window", "actions", "preprocess", "variables", "screen", "rewards", "termination", "reset"
    )
    game = _parse_game(root.need_table("game"))
    backend = game.backend
    rom_table = root.table("rom")
    window_table = root.table("window")
    if backend == "pyboy":
        if rom_table is None:
            raise root.missing("rom", "a [rom] table with sha256 (pyboy profiles check the ROM they run)")
        if window_table is not None:
            raise root.bad("window", "a table", "no [window] table in a pyboy profile")
    else:
        if window_table is None:
            raise root.missing("window", "a [window] table with title or process")
        if rom_table is not None:
            raise root.bad("rom", "a table", "no [rom] table in a desktop profile")
    rom = _parse_rom(rom_table) if rom_table is not None else None
    if rom is not None and rom.any_rom and path.parent == SHIPPED_DIR:
        raise root.bad("rom.sha256", "any", "the digest of the ROM a shipped profile was written for")
    window = _parse_window(window_table) if window_table is not None else None
    actions = _parse_actions(root.need_table("actions"), backend)
    preprocess_table = root.table("preprocess")
    preprocess = _parse_preprocess(preprocess_table) if preprocess_table is not None else Preprocess()
    variables = _parse_variables(root.table("variables"), backend)
    screen = _parse_screen(root.table("screen"), variables)
    names = {*variables, *(name for signal in screen.values() for name in signal.variables)}
    rewards = tuple(_parse_reward(t, names, path.parent) for t in root.array_of_tables("rewards"))
    termination = tuple(_parse_rule(t, names, path.parent) for t in root.array_of_tables("termination"))
    if any(isinstance(r, DeathZoneReward) for r in rewards) and not any(
        isinstance(r, XTeleportRule) for r in termination
    ):
        raise root.bad(
            "rewards", "a death_zone term", "an x_teleport rule in [[termination]] too (it detects the deaths)"
        )
    reset_table = root.table("reset")
    reset = _parse_reset(reset_table, backend, path.parent) if reset_table is not None else ResetProcedure()
    return GameProfile(
        path=path,
        game=game,
        actions=actions,
        preprocess=preprocess,
        rom=rom,
        window=window,
        variables=variables,
        screen=screen,
        rewards=rewards,
        termination=termination,
        reset=reset,
    )


def _parse_game(table: _Table) -> GameSection:
    table.only("name", "backend", "frame_rate_hz")
    rate = table.number("frame_rate_hz", minimum=0.0, exclusive=True)
    return GameSection(
        name=table.need_string("name"),
        backend=table.choice("backend", BACKENDS, required=True),
        frame_rate_hz=rate,
    )


def _parse_rom(table: _Table) -> RomSection:
    table.only("sha256", "sha1", "titles", "game_wrapper")
    sha256 = table.digests("sha256", 64, allow_any=True)
    sha1 = table.digests("sha1", 40, allow_any=False)
    any_rom = sha256 == ("any",)
    if not sha256 and not sha1:
        raise table.missing("sha256", "the ROM's SHA-256 as 64 hex digits (or a list of accepted ones)")
    return RomSection(
        sha256=() if any_rom else sha256,
        sha1=sha1,
        any_rom=any_rom,
        titles=table.strings("titles"),
        game_wrapper=table.boolean("game_wrapper", default=True),
    )


def _parse_window(table: _Table) -> WindowSection:
    table.only("title", "process", "capture")
    title = table.string("title")
    process = table.string("process")
    if title is None and process is None:
        raise table.missing("title", "a window title substring or a process name (window.process)")
    return WindowSection(title, process, table.choice("capture", ("client", "window"), default="client"))


def _parse_actions(table: _Table, backend: str) -> ActionSet:
    table.only("buttons", "keys", "names", "fallback", "pause_key")
    expected_field, other = ("buttons", "keys") if backend == "pyboy" else ("keys", "buttons")
    if table.has(other):
        raise table.bad(other, table.raw(other), f"actions.{expected_field} in a {backend} profile")
    inputs = table.input_lists(expected_field, PYBOY_BUTTONS if backend == "pyboy" else None, required=True)
    if not inputs:
        raise table.bad(expected_field, [], "at least one action")
    names = table.strings("names")
    if names and len(names) != len(inputs):
        raise table.bad("names", list(names), f"{len(inputs)} names, one per action")
    fallback = table.integer("fallback", default=0, minimum=0)
    if fallback >= len(inputs):
        raise table.bad("fallback", fallback, f"an action index between 0 and {len(inputs) - 1}")
    pause_key = table.string("pause_key")
    if pause_key is not None and backend != "desktop":
        raise table.bad("pause_key", pause_key, "no pause_key in a pyboy profile (the emulator pauses itself)")
    default_names = tuple("+".join(combo) if combo else "noop" for combo in inputs)
    return ActionSet(inputs=inputs, names=names or default_names, fallback=fallback, pause_key=pause_key)


def _parse_preprocess(table: _Table) -> Preprocess:
    table.only("width", "height", "grayscale", "frame_stack", "frame_skip")
    defaults = Preprocess()
    return Preprocess(
        width=table.integer("width", default=defaults.width, minimum=1),
        height=table.integer("height", default=defaults.height, minimum=1),
        grayscale=table.boolean("grayscale", default=defaults.grayscale),
        frame_stack=table.integer("frame_stack", default=defaults.frame_stack, minimum=1),
        frame_skip=table.integer("frame_skip", default=defaults.frame_skip, minimum=1),
    )


def _parse_variables(table: _Table | None, backend: str) -> dict[str, VariableSpec]:
    if table is None:
        return {}
    variables: dict[str, VariableSpec] = {}
    for name in table.field_names():
        if not _IDENTIFIER.match(name):
            raise table.bad(name, name, "a variable name made of letters, digits and _ (not starting with a digit)")
        variables[name] = _parse_variable(table.need_table(name), name, backend)
    return variables


def _parse_variable(table: _Table, name: str, backend: str) -> VariableSpec:
    table.only("address", "module", "pointers", "pointer_size", "wrapper", "type", "length", "endianness")
    address = table.integer("address", minimum=0)
    module = table.string("module")
    pointers = table.integers("pointers")
    wrapper = table.string("wrapper")
    if backend == "pyboy":
        if module is not None or table.has("pointers") or table.has("pointer_size"):
            raise table.bad("module", module, "address or wrapper in a pyboy profile (pointer chains are desktop-only)")
        if address is None and wrapper is None:
            raise table.missing("address", "a RAM address (0..0xFFFF) or wrapper = <PyBoy game wrapper attribute>")
        if address is not None and address > 0xFFFF:
            raise table.bad("address", address, "a Game Boy address between 0 and 0xFFFF")
    else:
        if wrapper is not None:
            raise table.bad("wrapper", wrapper, "address or module + pointers in a desktop profile")
        if (module is None) == (address is None):
            raise table.missing("module", "either address (absolute) or module + pointers, not both")
        if module is not None and not pointers:
            raise table.missing("pointers", "a non-empty list of offsets [base offset, offset, ...]")
        if module is None and pointers:
            raise table.bad("pointers", list(pointers), "pointers only together with module")
    pointer_size = table.integer("pointer_size")
    if pointer_size is not None and pointer_size not in (4, 8):
        raise table.bad("pointer_size", pointer_size, "4 or 8")
    kind = table.choice("type", VARIABLE_TYPES, default="u8")
    length = table.integer("length")
    if kind == "bcd":
        if length is None or not 1 <= length <= MAX_BCD_BYTES:
            raise table.bad("length", length, f"the BCD value's size in bytes, 1 to {MAX_BCD_BYTES}")
    elif length is not None:
        raise table.bad("length", length, f'no length for type "{kind}" (its size is fixed)')
    return VariableSpec(
        name=name,
        address=address,
        module=module,
        pointers=pointers,
        pointer_size=pointer_size,
        wrapper=wrapper,
        type=kind,
        length=length or 0,
        endianness=table.choice("endianness", ("little", "big"), default="little"),
    )


def _parse_screen(table: _Table | None, variables: Mapping[str, VariableSpec]) -> dict[str, ScreenSignal]:
    if table is None:
        return {}
    signals: dict[str, ScreenSignal] = {}
    taken = {name: f"variables.{name}" for name in variables}
    for name in table.field_names():
        if not _IDENTIFIER.match(name):
            raise table.bad(name, name, "a signal name made of letters, digits and _ (not starting with a digit)")
        signal = _parse_screen_signal(table.need_table(name), name)
        for variable in signal.variables:
            if variable in taken:
                raise table.bad(
                    name,
                    table.raw(name),
                    f"a name whose variables ({', '.join(signal.variables)}) are not already taken: "
                    f"{variable} is {taken[variable]}",
                )
            taken[variable] = f"screen.{name}"
        signals[name] = signal
    return signals


def _parse_screen_signal(table: _Table, name: str) -> ScreenSignal:
    kind = table.choice("kind", SCREEN_KINDS, required=True)
    region = table.region("region", MIN_SCREEN_REGION_PX)
    if kind == "scroll":
        table.only("kind", "region", "width", "min_response", "max_shift_px")
        min_response = table.number("min_response", default=DEFAULT_MIN_RESPONSE, minimum=0.0)
        if min_response >= 1.0:
            raise table.bad("min_response", min_response, "a correlation peak height in [0, 1)")
        return ScrollSignal(
            name,
            region,
            table.integer("width", default=DEFAULT_SCREEN_WIDTH_PX, minimum=MIN_SCREEN_REGION_PX),
            min_response,
            table.number("max_shift_px", minimum=0.0, exclusive=True),
        )
    table.only("kind", "region", "width", "min_change")
    return ScreenChangeSignal(
        name,
        region,
        table.integer("width", default=DEFAULT_SCREEN_WIDTH_PX, minimum=MIN_SCREEN_REGION_PX),
        table.number("min_change", default=0.0, minimum=0.0),
    )


def _parse_template(table: _Table, folder: Path) -> TemplateMatch:
    region = table.region("region", MIN_TEMPLATE_PX)
    threshold = table.number("threshold", default=DEFAULT_TEMPLATE_THRESHOLD, minimum=0.0, exclusive=True)
    if threshold > 1.0:
        raise table.bad("threshold", threshold, "a normalized correlation in (0, 1] (0.8 is a good start)")
    downscale = table.integer("downscale", default=1, minimum=1)
    image = table.need_string("image")
    path = table.file_path("image", image, folder)
    try:
        encoded = np.frombuffer(path.read_bytes(), np.uint8)
    except FileNotFoundError:
        raise table.bad(
            "image",
            image,
            f"an image file (PNG, BMP or JPEG); {path} does not exist (a relative path starts at the profile's folder)",
        ) from None
    except OSError as error:
        raise table.bad("image", image, f"an image file that can be read; {path}: {error.strerror}") from error
    # cv2.imdecode rather than imread: imread cannot open paths with non-ASCII characters on Windows.
    bgr = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size else None
    if bgr is None:
        raise table.bad("image", image, f"a PNG, BMP or JPEG image; OpenCV cannot decode {path}")
    # The same grey as the captured frames get (cv2's RGB->grey weights), so that scores compare like for like.
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    height, width = grey.shape
    if region is not None and (width > region.width or height > region.height):
        raise table.bad(
            "image",
            image,
            f"an image that fits in region {region} ({region.width}x{region.height} px); it is {width}x{height} px: "
            "crop the image or enlarge the region",
        )
    pixels = shrink_grey(grey, downscale)
    if min(pixels.shape) < MIN_TEMPLATE_PX:
        raise table.bad(
            "image",
            image,
            f"an image at least {MIN_TEMPLATE_PX}x{MIN_TEMPLATE_PX} px after downscale {downscale}; it is "
            f"{width}x{height} px",
        )
    if float(pixels.std()) < 1.0:
        raise table.bad(
            "image",
            image,
            "an image with some contrast; a uniform image is found everywhere or nowhere by normalized correlation",
        )
    return TemplateMatch(table.where, path, pixels, region, threshold, downscale)


def shrink_grey(grey: np.ndarray, factor: int) -> np.ndarray:
    """`grey` shrunk by a whole factor, as screen signals and templates see it; the pixels beyond a multiple of
    the factor are dropped, because INTER_AREA is several times faster for whole factors."""
    if factor == 1:
        return grey
    height, width = grey.shape[0] // factor, grey.shape[1] // factor
    if height == 0 or width == 0:
        return grey[:height, :width]
    cropped = grey[: height * factor, : width * factor]
    return cv2.resize(cropped, (width, height), interpolation=cv2.INTER_AREA)


def _parse_reward(table: _Table, variables: Collection[str], folder: Path) -> RewardTerm:
    kind = table.choice("kind", ("delta", "milestone", "faint", "death_zone", "constant", "template"), required=True)
    if kind == "template":
        table.only("kind", "image", "region", "threshold", "downscale", "reward")
        return TemplateReward(_parse_template(table, folder), table.number("reward", required=True))
    if kind == "delta":
        table.only("kind", "variable", "scale")
        return DeltaReward(table.variable("variable", variables), table.number("scale", default=1.0))
    if kind == "milestone":
        table.only("kind", "variable", "every_px", "reward")
        return MilestoneReward(
            table.variable("variable", variables),
            table.number("every_px", required=True, minimum=0.0, exclusive=True),
            table.number("reward", default=1.0),
        )
    if kind == "faint":
        table.only("kind", "variables", "reward")
        return FaintReward(table.variable_list("variables", variables), table.number("reward", required=True))
    if kind == "death_zone":
        table.only("kind", "variable_x", "radius_px", "penalty", "repeat_multiplier")
        penalty = table.number("penalty", required=True)
        if penalty > 0:
            raise table.bad("penalty", penalty, "a number <= 0 (the reward added on a death)")
        return DeathZoneReward(
            table.variable("variable_x", variables),
            table.number("radius_px", required=True, minimum=0.0, exclusive=True),
            penalty,
            table.number("repeat_multiplier", default=1.0, minimum=1.0),
        )
    table.only("kind", "reward")
    return ConstantReward(table.number("reward", required=True))


def _parse_rule(table: _Table, variables: Collection[str], folder: Path) -> TerminationRule:
    kind = table.choice(
        "kind",
        ("equals", "not_equals", "above", "below", "all_zero", "x_teleport", "stagnation", "time_cap", "template"),
        required=True,
    )
    if kind == "template":
        table.only("kind", "image", "region", "threshold", "downscale", "outcome")
        return TemplateRule(_parse_template(table, folder), table.outcome("terminated"))
    if kind in ("equals", "not_equals"):
        table.only("kind", "variable", "value", "outcome")
        return EqualsRule(
            table.variable("variable", variables),
            table.number("value", required=True),
            negate=kind == "not_equals",
            outcome=table.outcome("terminated"),
        )
    if kind in ("above", "below"):
        table.only("kind", "variable", "value", "outcome")
        return ThresholdRule(
            table.variable("variable", variables),
            table.number("value", required=True),
            below=kind == "below",
            outcome=table.outcome("terminated"),
        )
    if kind == "all_zero":
        table.only("kind", "variables", "outcome")
        return AllZeroRule(table.variable_list("variables", variables), table.outcome("terminated"))
    if kind == "x_teleport":
        table.only("kind", "variable", "relative_drop", "absolute_drop_px", "outcome")
        relative = table.number("relative_drop", required=True, minimum=0.0, exclusive=True)
        if relative > 1.0:
            raise table.bad("relative_drop", relative, "a fraction of the previous value in (0, 1]")
        return XTeleportRule(
            table.variable("variable", variables),
            relative,
            table.number("absolute_drop_px", required=True, minimum=0.0, exclusive=True),
            table.outcome("terminated", allow_none=True),
        )
    if kind == "stagnation":
        table.only("kind", "variable", "epsilon_px", "window_s", "outcome")
        return StagnationRule(
            table.variable("variable", variables),
            table.number("epsilon_px", required=True, minimum=0.0, exclusive=True),
            table.number("window_s", required=True, minimum=0.0, exclusive=True),
            table.outcome("truncated"),
        )
    table.only("kind", "seconds", "outcome")
    return TimeCapRule(table.number("seconds", required=True, minimum=0.0, exclusive=True), table.outcome("truncated"))


def _parse_reset(table: _Table, backend: str, folder: Path) -> ResetProcedure:
    table.only("savestate", "keys", "press_frames", "wait_frames")
    savestate = table.string("savestate")
    if savestate is not None and backend != "pyboy":
        raise table.bad("savestate", savestate, "no savestate in a desktop profile (use keys)")
    keys: list[tuple[str, ...] | int] = []
    raw_keys = table.raw("keys")
    if raw_keys is not None:
        if not isinstance(raw_keys, list):
            raise table.bad("keys", raw_keys, 'a list of inputs such as [["start"], 30, ["a"]]')
        names = PYBOY_BUTTONS if backend == "pyboy" else None
        for index, entry in enumerate(raw_keys):
            if isinstance(entry, int) and not isinstance(entry, bool) and entry >= 0:
                keys.append(entry)
            else:
                keys.append(table.input_combo(f"keys[{index}]", entry, names))
    return ResetProcedure(
        savestate=table.file_path("savestate", savestate, folder) if savestate is not None else None,
        keys=tuple(keys),
        press_frames=table.integer("press_frames", default=2, minimum=1),
        wait_frames=table.integer("wait_frames", default=0, minimum=0),
    )


# -- field access with errors that name the field -------------------------------------------------


def _show(value: object) -> str:
    if value is None:
        return "missing"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


class _Table:
    """A TOML table plus where it is, so every check can name the dotted field it rejects."""

    def __init__(self, data: Mapping[str, Any], prefix: str, label: str) -> None:
        self._data = data
        self._prefix = prefix
        self._label = label

    @property
    def where(self) -> str:
        """This table's own dotted name ("termination[1]")."""
        return self._prefix

    def dotted(self, key: str) -> str:
        if key.startswith("["):
            return f"{self._prefix}{key}"
        return f"{self._prefix}.{key}" if self._prefix else key

    def bad(self, key: str, value: object, expected: str) -> ProfileError:
        return ProfileError(f"profile {self._label}: {self.dotted(key)} is {_show(value)}; expected {expected}.")

    def file_path(self, key: str, text: str, folder: Path) -> Path:
        """A file named in the profile: ~ expanded, a relative path taken from the profile's folder."""
        try:
            return (folder / expand_home(text)).resolve()
        except ValueError as error:
            raise self.bad(key, text, f"a path whose home directory exists ({error})") from None

    def missing(self, key: str, expected: str) -> ProfileError:
        return self.bad(key, None, expected)

    def field_names(self) -> list[str]:
        return list(self._data)

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> Any:
        return self._data.get(key)

    def only(self, *allowed: str) -> None:
        for key in self._data:
            if key not in allowed:
                raise ProfileError(
                    f"profile {self._label}: {self.dotted(key)} is not a known field; "
                    f"expected one of {', '.join(allowed)}."
                )

    def table(self, key: str, required: bool = False) -> _Table | None:
        value = self._data.get(key)
        if value is None:
            if required:
                raise self.missing(key, "a table")
            return None
        if not isinstance(value, dict):
            raise self.bad(key, value, "a table")
        return _Table(value, self.dotted(key), self._label)

    def need_table(self, key: str) -> _Table:
        table = self.table(key, required=True)
        assert table is not None
        return table

    def array_of_tables(self, key: str) -> list[_Table]:
        value = self._data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.bad(key, value, f"an array of tables ([[{key}]])")
        return [_Table(item, f"{self.dotted(key)}[{index}]", self._label) for index, item in enumerate(value)]

    def need_string(self, key: str) -> str:
        value = self.string(key, required=True)
        assert value is not None
        return value

    def string(self, key: str, required: bool = False) -> str | None:
        value = self._data.get(key)
        if value is None:
            if required:
                raise self.missing(key, "a string")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.bad(key, value, "a non-empty string")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None, required: bool = False) -> str:
        value = self._data.get(key, default)
        if value not in choices:
            raise self.bad(key, value, "one of " + ", ".join(f'"{c}"' for c in choices))
        assert isinstance(value, str)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._data.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, value, "true or false")
        return value

    def _value(self, key: str, default: Any) -> Any:
        """The key's value, or `default` when it is absent or None (a parsed TOML file has no None, but a
        profile given as a dict may)."""
        value = self._data.get(key)
        return default if value is None else value

    def integer(self, key: str, default: int | None = None, minimum: int | None = None) -> Any:
        value = self._value(key, default)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.bad(key, value, "an integer")
        if minimum is not None and value < minimum:
            raise self.bad(key, value, f"an integer >= {minimum}")
        return value

    def number(
        self,
        key: str,
        default: float | None = None,
        required: bool = False,
        minimum: float | None = None,
        exclusive: bool = False,
    ) -> Any:
        value = self._value(key, default)
        if value is None:
            if required:
                raise self.missing(key, "a number")
            return None
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise self.bad(key, value, "a number")
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            raise self.bad(key, value, f"a number {'>' if exclusive else '>='} {minimum:g}")
        return float(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self.bad(key, value, "a list of non-empty strings")
        return tuple(value)

    def integers(self, key: str) -> tuple[int, ...]:
        value = self._data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        ):
            raise self.bad(key, value, "a list of integers")
        return tuple(value)

    def digests(self, key: str, hex_digits: int, allow_any: bool) -> tuple[str, ...]:
        value = self._data.get(key)
        if value is None:
            return ()
        if allow_any and value == "any":
            return ("any",)
        items = [value] if isinstance(value, str) else value
        what = f"{hex_digits} hex digits or a list of such digests" + (
            ' (or "any" for development)' if allow_any else ""
        )
        if not isinstance(items, list) or not items:
            raise self.bad(key, value, what)
        for item in items:
            if not isinstance(item, str) or len(item) != hex_digits or not _HEX.match(item):
                raise self.bad(key, value, what)
        return tuple(item.lower() for item in items)

    def input_combo(self, key: str, value: object, names: tuple[str, ...] | None) -> tuple[str, ...]:
        """One combination of inputs: a list of button/key names, each at most once."""
        if not isinstance(value, list):
            raise self.bad(key, value, "a list of " + ("buttons" if names else "key names"))
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.bad(f"{key}[{index}]", item, "a button or key name")
            if names is not None and item.lower() not in names:
                raise self.bad(f"{key}[{index}]", item, "one of " + ", ".join(names))
        combo = tuple(item.lower() for item in value) if names is not None else tuple(value)
        if len(set(combo)) != len(combo):
            raise self.bad(key, value, "each input at most once per combination")
        return combo

    def input_lists(
        self, key: str, names: tuple[str, ...] | None, required: bool = False
    ) -> tuple[tuple[str, ...], ...]:
        value = self._data.get(key)
        if value is None:
            if required:
                raise self.missing(key, 'a list of input combinations, one per action, e.g. [[], ["a"]]')
            return ()
        if not isinstance(value, list):
            raise self.bad(key, value, "a list of input combinations, one per action")
        return tuple(self.input_combo(f"{key}[{index}]", entry, names) for index, entry in enumerate(value))

    def region(self, key: str, minimum_px: int) -> Region | None:
        value = self._data.get(key)
        if value is None:
            return None
        what = f"[x, y, width, height] in captured-frame pixels, x and y >= 0, width and height >= {minimum_px}"
        if (
            not isinstance(value, list)
            or len(value) != 4
            or not all(isinstance(item, int) and not isinstance(item, bool) for item in value)
        ):
            raise self.bad(key, value, what)
        x, y, width, height = value
        if x < 0 or y < 0 or width < minimum_px or height < minimum_px:
            raise self.bad(key, value, what)
        return Region(x, y, width, height)

    def variable(self, key: str, variables: Collection[str]) -> str:
        name = self.need_string(key)
        if name not in variables:
            raise self.bad(key, name, _known_variables(variables))
        return name

    def variable_list(self, key: str, variables: Collection[str]) -> tuple[str, ...]:
        names = self.strings(key)
        if not names:
            raise self.missing(key, "a non-empty list of variable names")
        for index, name in enumerate(names):
            if name not in variables:
                raise self.bad(f"{key}[{index}]", name, _known_variables(variables))
        return names

    def outcome(self, default: Outcome, allow_none: bool = False) -> Outcome:
        choices: tuple[str, ...] = ("terminated", "truncated", "none") if allow_none else ("terminated", "truncated")
        return self.choice("outcome", choices, default=default)  # type: ignore[return-value]


def _known_variables(variables: Collection[str]) -> str:
    if not variables:
        return "a variable defined in [variables.<name>] or [screen.<name>] (the profile defines none)"
    return "one of the profile's variables: " + ", ".join(sorted(variables))
