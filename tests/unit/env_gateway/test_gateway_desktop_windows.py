"""The desktop backend's Windows part, with pywin32, pydirectinput, pymem and mss faked at the import boundary.

The fakes are modules placed in sys.modules before `desktop_windows` is imported; they model a
Windows desktop (top-level windows, processes, a game's memory, the keyboard) with just the calls
the backend makes, so what is checked is our use of those APIs: which window is chosen, which
rectangle is captured, which keys are sent with which names, how a pointer chain is followed, and
what the errors say.
"""

from __future__ import annotations

import importlib
import io
import math
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from rtrl.services.env_gateway.backends import keyguard
from rtrl.services.env_gateway.backends.desktop import (
    DesktopBackend,
    InputError,
    MemoryAccessError,
    ScreenRect,
    WindowNotFoundError,
)
from rtrl.services.env_gateway.profiles import parse_profile

GAME_PID = 4242
GAME_HWND = 0x2001
MODULE_BASE = 0x140000000
HEAP = 0x0200_0000
PLAYER = 0x0300_0000
SCREEN = {"left": 0, "top": 0, "width": 1920, "height": 1080}
PIXEL_BGRA = (10, 20, 30, 255)
# VirtualQueryEx's words (winnt.h), and where the fake .exe's writable data (its globals) starts.
MEM_COMMIT, MEM_PRIVATE, MEM_MAPPED, MEM_IMAGE = 0x1000, 0x20000, 0x40000, 0x1000000
PAGE_READONLY, PAGE_READWRITE, PAGE_GUARD = 0x02, 0x04, 0x100
MODULE_BASE_DATA = MODULE_BASE + 0x200


class FakeWinError(Exception):
    """pywintypes.error"""


class FakePymemError(Exception):
    pass


class FakeMemoryReadError(FakePymemError):
    pass


class FakeFailSafe(Exception):
    pass


@dataclass
class FakeWindows:
    """A Windows desktop as the win32/pydirectinput/pymem/mss fakes show it."""

    windows: list[tuple[int, str, int, bool]] = field(
        default_factory=lambda: [
            (0x1001, "Untitled - Notepad", 100, True),
            (GAME_HWND, "SuperTux 0.6.3", GAME_PID, True),
            (0x3001, "SuperTux - Wiki - Browser", 300, True),
            (0x4001, "SuperTux hidden helper", GAME_PID, False),
        ]
    )
    processes: dict[int, str] = field(
        default_factory=lambda: {100: "notepad.exe", GAME_PID: "supertux2.exe", 300: "browser.exe"}
    )
    client_origin: tuple[int, int] = (108, 131)
    client_size: tuple[int, int] = (800, 600)
    memory: dict[int, bytes] = field(default_factory=dict)
    is_64_bit: bool = True
    unopenable: bool = False
    input_rejected: bool = False
    fail_safe: bool = False
    sent: list[tuple[str, str]] = field(default_factory=list)
    grabbed: list[dict[str, int]] = field(default_factory=list)
    foreground: list[int] = field(default_factory=list)
    closed_processes: int = 0
    extra_regions: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    """(base, size, State, Protect, Type) that VirtualQueryEx reports besides the memory's own regions."""

    # -- the fake modules ----------------------------------------------------------------------

    def modules(self) -> dict[str, ModuleType]:
        win32gui = ModuleType("win32gui")
        win32gui.EnumWindows = self._enum_windows  # type: ignore[attr-defined]
        win32gui.IsWindowVisible = lambda hwnd: self._window(hwnd)[3]  # type: ignore[attr-defined]
        win32gui.GetWindowText = lambda hwnd: self._window(hwnd)[1]  # type: ignore[attr-defined]
        win32gui.GetClientRect = lambda hwnd: (0, 0, *self.client_size)  # type: ignore[attr-defined]
        win32gui.ClientToScreen = self._client_to_screen  # type: ignore[attr-defined]
        win32gui.GetWindowRect = self._window_rect  # type: ignore[attr-defined]
        win32gui.IsWindow = lambda hwnd: any(w[0] == hwnd for w in self.windows)  # type: ignore[attr-defined]
        win32gui.IsIconic = lambda hwnd: False  # type: ignore[attr-defined]
        win32gui.ShowWindow = lambda hwnd, command: None  # type: ignore[attr-defined]
        win32gui.SetForegroundWindow = self.foreground.append  # type: ignore[attr-defined]
        win32process = ModuleType("win32process")
        win32process.GetWindowThreadProcessId = lambda hwnd: (1, self._window(hwnd)[2])  # type: ignore[attr-defined]
        win32con = ModuleType("win32con")
        win32con.SW_RESTORE = 9  # type: ignore[attr-defined]
        pywintypes = ModuleType("pywintypes")
        pywintypes.error = FakeWinError  # type: ignore[attr-defined]

        pydirectinput = ModuleType("pydirectinput")
        pydirectinput.KEYBOARD_MAPPING = {  # type: ignore[attr-defined]
            name: code
            for code, name in enumerate(["left", "right", "up", "down", "space", "enter", "esc", "ctrlleft", "p"], 1)
        }
        pydirectinput.FailSafeException = FakeFailSafe  # type: ignore[attr-defined]
        pydirectinput.keyDown = lambda key, _pause=True: self._send("down", key, _pause)  # type: ignore[attr-defined]
        pydirectinput.keyUp = lambda key, _pause=True: self._send("up", key, _pause)  # type: ignore[attr-defined]

        pymem = ModuleType("pymem")
        pymem_exception = ModuleType("pymem.exception")
        pymem_exception.PymemError = FakePymemError  # type: ignore[attr-defined]
        pymem_exception.WinAPIError = type("WinAPIError", (Exception,), {})  # type: ignore[attr-defined]
        pymem_exception.MemoryReadError = FakeMemoryReadError  # type: ignore[attr-defined]
        pymem_process = ModuleType("pymem.process")
        pymem_process.list_processes = self._list_processes  # type: ignore[attr-defined]
        pymem_process.module_from_name = self._module_from_name  # type: ignore[attr-defined]
        pymem_process.is_64_bit = lambda handle: self.is_64_bit  # type: ignore[attr-defined]
        pymem_memory = ModuleType("pymem.memory")
        pymem_memory.virtual_query = self._virtual_query  # type: ignore[attr-defined]
        pymem.Pymem = lambda pid: FakePymem(self, pid)  # type: ignore[attr-defined]
        pymem.exception = pymem_exception  # type: ignore[attr-defined]
        pymem.process = pymem_process  # type: ignore[attr-defined]
        pymem.memory = pymem_memory  # type: ignore[attr-defined]

        mss = ModuleType("mss")
        mss_exception = ModuleType("mss.exception")
        mss_exception.ScreenShotError = type("ScreenShotError", (Exception,), {})  # type: ignore[attr-defined]
        mss.exception = mss_exception  # type: ignore[attr-defined]
        mss.MSS = lambda: FakeMSS(self)  # type: ignore[attr-defined]
        return {
            "win32gui": win32gui,
            "win32process": win32process,
            "win32con": win32con,
            "pywintypes": pywintypes,
            "pydirectinput": pydirectinput,
            "pymem": pymem,
            "pymem.exception": pymem_exception,
            "pymem.process": pymem_process,
            "pymem.memory": pymem_memory,
            "mss": mss,
            "mss.exception": mss_exception,
        }

    def _window(self, hwnd: int) -> tuple[int, str, int, bool]:
        return next(w for w in self.windows if w[0] == hwnd)

    def _enum_windows(self, callback: Any, extra: Any) -> None:
        for window in self.windows:
            if not callback(window[0], extra):
                break

    def _client_to_screen(self, hwnd: int, point: tuple[int, int]) -> tuple[int, int]:
        return self.client_origin[0] + point[0], self.client_origin[1] + point[1]

    def _window_rect(self, hwnd: int) -> tuple[int, int, int, int]:
        left, top = self.client_origin[0] - 8, self.client_origin[1] - 31
        return (
            left,
            top,
            self.client_origin[0] + self.client_size[0] + 8,
            self.client_origin[1] + self.client_size[1] + 8,
        )

    def _send(self, direction: str, key: str, pause: bool) -> bool:
        assert pause is False, "pydirectinput would sleep 0.1 s after every key"
        if self.fail_safe:
            raise FakeFailSafe("mouse in the corner")
        if self.input_rejected:
            return False
        self.sent.append((direction, key))
        return True

    def _list_processes(self) -> Iterator[Any]:
        # Like pymem: one entry object, refilled for every process.
        entry = SimpleNamespace()
        for pid, name in self.processes.items():
            entry.th32ProcessID, entry.szExeFile = pid, name.encode()
            yield entry

    def _module_from_name(self, handle: int, name: str) -> Any:
        return (
            SimpleNamespace(name="supertux2.exe", lpBaseOfDll=MODULE_BASE) if name.lower() == "supertux2.exe" else None
        )

    def _virtual_query(self, handle: int, address: int) -> Any:
        """MEMORY_BASIC_INFORMATION of the region at or after `address`: each memory block is committed
        read-write private memory (the one at MODULE_BASE is the .exe's image), plus `extra_regions`."""
        regions = sorted(
            [
                (start, len(data), MEM_COMMIT, PAGE_READWRITE, MEM_IMAGE if start == MODULE_BASE_DATA else MEM_PRIVATE)
                for start, data in self.memory.items()
            ]
            + self.extra_regions
        )
        for base, size, state, protect, kind in regions:
            if address < base + size:
                start = max(base, address)
                if start > address:  # a free gap before this region
                    gap = start - address
                    return SimpleNamespace(BaseAddress=address, RegionSize=gap, State=0x10000, Protect=1, Type=0)
                return SimpleNamespace(BaseAddress=base, RegionSize=size, State=state, Protect=protect, Type=kind)
        # Like pymem, which does not check VirtualQueryEx's result: past the last region, a zeroed structure.
        return SimpleNamespace(BaseAddress=None, RegionSize=0, State=0, Protect=0, Type=0)

    def read(self, address: int, length: int) -> bytes:
        for start, data in self.memory.items():
            if start <= address and address + length <= start + len(data):
                return data[address - start : address - start + length]
        raise FakeMemoryReadError(f"Could not read memory at: {address}, length: {length} - GetLastError: 299")


class FakePymem:
    def __init__(self, desktop: FakeWindows, pid: int) -> None:
        if desktop.unopenable:
            raise FakePymemError(f"Could not open process: {pid}")
        self.desktop = desktop
        self.process_handle = 0x99

    def read_bytes(self, address: int, length: int) -> bytes:
        return self.desktop.read(address, length)

    def list_modules(self) -> Iterator[Any]:
        yield SimpleNamespace(name="supertux2.exe", lpBaseOfDll=MODULE_BASE, SizeOfImage=0x1000)
        yield SimpleNamespace(name="SDL2.dll", lpBaseOfDll=0x7FF0_0000_0000, SizeOfImage=0x1000)

    def close_process(self) -> None:
        self.desktop.closed_processes += 1


class FakeMSS:
    def __init__(self, desktop: FakeWindows) -> None:
        self.desktop = desktop
        self.monitors = [SCREEN, SCREEN]

    def grab(self, monitor: dict[str, int]) -> Any:
        self.desktop.grabbed.append(dict(monitor))
        raw = bytes(PIXEL_BGRA) * (monitor["width"] * monitor["height"])
        return SimpleNamespace(raw=raw, width=monitor["width"], height=monitor["height"])

    def close(self) -> None:
        pass


@pytest.fixture
def desktop(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWindows]:
    fake = FakeWindows()
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    yield fake
    # The module imported against the fakes must not outlive them.
    sys.modules.pop("rtrl.services.env_gateway.backends.desktop_windows", None)


@pytest.fixture
def windows(desktop: FakeWindows) -> ModuleType:
    sys.modules.pop("rtrl.services.env_gateway.backends.desktop_windows", None)
    return importlib.import_module("rtrl.services.env_gateway.backends.desktop_windows")


def game_memory(desktop: FakeWindows, pointer_size: int, x: float, coins: int) -> None:
    """supertux2.exe+0x2A0 -> heap object, +0x18 -> player, +0x4 -> x (f32); +0x8 -> coins (BCD, 2 bytes)."""
    width = "<Q" if pointer_size == 8 else "<I"
    desktop.memory = {
        MODULE_BASE_DATA: bytes(0xA0) + struct.pack(width, HEAP),
        HEAP: bytes(0x18) + struct.pack(width, PLAYER),
        PLAYER: struct.pack("<Iff", 0, x, 0.0)[:8] + bytes([coins % 100 // 10 * 16 + coins % 10, coins // 100 % 10]),
    }


PROFILE = {
    "game": {"name": "SuperTux", "backend": "desktop"},
    "window": {"title": "SuperTux", "process": "supertux2.exe"},
    "actions": {
        "keys": [[], ["Right"], ["Right", "space"], ["Control_L"]],
        "fallback": 0,
        "pause_key": "Escape",
    },
    "variables": {
        "x": {"module": "supertux2.exe", "pointers": [0x2A0, 0x18, 0x4], "type": "f32"},
        "coins": {"module": "supertux2.exe", "pointers": [0x2A0, 0x18, 0x8], "type": "bcd", "length": 2},
    },
}


def profile(**changes: Any) -> Any:
    data = {**PROFILE, **changes}
    return parse_profile(data, Path("supertux.toml"))


# -- windows -----------------------------------------------------------------------------------------


def test_the_window_is_the_visible_one_whose_title_contains_the_text_and_whose_process_matches(
    windows: ModuleType,
) -> None:
    platform = windows.WindowsPlatform()
    by_both = platform.find_window("SuperTux", "SuperTux2.exe")  # exe names are case-insensitive
    assert (by_both.hwnd, by_both.title, by_both.pid) == (GAME_HWND, "SuperTux 0.6.3", GAME_PID)
    assert platform.find_window(None, "supertux2.exe").hwnd == GAME_HWND  # the hidden helper is skipped
    assert platform.find_window("Wiki", None).pid == 300


def test_a_missing_window_names_what_was_looked_for_and_says_to_start_the_game(
    windows: ModuleType, desktop: FakeWindows
) -> None:
    del desktop.processes[GAME_PID]
    with pytest.raises(WindowNotFoundError) as raised:
        windows.WindowsPlatform().find_window("SuperTux", "supertux2.exe")
    message = str(raised.value)
    assert "'SuperTux'" in message and "'supertux2.exe'" in message and "no such process is running" in message
    assert "start the game first" in message and "'Untitled - Notepad'" in message


def test_the_client_area_is_located_on_the_screen(windows: ModuleType) -> None:
    window = windows.WindowsPlatform().find_window("SuperTux", None)
    assert window.rect("client") == ScreenRect(108, 131, 800, 600)
    assert window.rect("window") == ScreenRect(100, 100, 816, 639)


# -- keys ----------------------------------------------------------------------------------------------


def test_profile_keysyms_are_sent_as_pydirectinput_names_without_its_pause(
    windows: ModuleType, desktop: FakeWindows
) -> None:
    keys = windows.DirectInputKeys()
    assert [keys.native_key(k) for k in ("Right", "space", "Return", "Escape", "Control_L", "P")] == [
        "right",
        "space",
        "enter",
        "esc",
        "ctrlleft",
        "p",
    ]
    keys.press("right")
    keys.release("right")
    assert desktop.sent == [("down", "right"), ("up", "right")]


def test_a_key_pydirectinput_cannot_send_is_named(windows: ModuleType) -> None:
    with pytest.raises(InputError, match=r"'Hyper_L'.*pydirectinput knows no key 'hyper_l'"):
        windows.DirectInputKeys().native_key("Hyper_L")


def test_the_fail_safe_and_rejected_input_say_what_to_do(windows: ModuleType, desktop: FakeWindows) -> None:
    keys = windows.DirectInputKeys()
    desktop.fail_safe = True
    with pytest.raises(InputError, match="top-left corner"):
        keys.press("right")
    desktop.fail_safe, desktop.input_rejected = False, True
    with pytest.raises(InputError, match="administrator"):
        keys.press("right")


def test_the_guardian_releases_every_key_through_pydirectinput(
    desktop: FakeWindows, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The guardian process's main, run in-process: the pipe reaches end-of-file at once, as when the
    # gateway has died, and it must release every key of the profile.
    config = '{"platform": "windows", "keys": ["right", "space", "esc"], "watch_pid": 1}\n'
    monkeypatch.setattr(sys, "stdin", io.StringIO(config))
    assert keyguard.guardian_main() == 0
    assert capsys.readouterr().out.strip() == keyguard.ARMED
    assert desktop.sent == [("up", "right"), ("up", "space"), ("up", "esc")]


# -- memory ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pointer_size, is_64_bit", [(8, True), (4, False)])
def test_a_pointer_chain_starts_at_the_modules_base_and_follows_pointers_of_the_processs_width(
    windows: ModuleType, desktop: FakeWindows, pointer_size: int, is_64_bit: bool
) -> None:
    desktop.is_64_bit = is_64_bit
    game_memory(desktop, pointer_size, x=1234.5, coins=42)
    backend = DesktopBackend(profile(), platform=windows.WindowsPlatform(), guardian=False)
    try:
        backend.reset()
        assert backend.read_variables() == {"x": 1234.5, "coins": 42.0}
        assert backend.memory is not None and backend.memory.pointer_size() == pointer_size
    finally:
        backend.close()
    assert desktop.closed_processes == 1


def test_an_unreadable_pointer_makes_the_variable_unknown_until_it_reads_again(
    windows: ModuleType, desktop: FakeWindows
) -> None:
    game_memory(desktop, 8, x=10.0, coins=1)
    backend = DesktopBackend(profile(), platform=windows.WindowsPlatform(), guardian=False)
    try:
        backend.reset()
        heap = desktop.memory.pop(HEAP)  # the level is being rebuilt
        backend.step(0)
        values = backend.read_variables()
        assert math.isnan(values["x"]) and math.isnan(values["coins"]) and backend.failed_reads == 2
        desktop.memory[HEAP] = heap
        backend.step(0)
        assert backend.read_variables() == {"x": 10.0, "coins": 1.0} and backend.failed_reads == 2
    finally:
        backend.close()


def test_a_process_that_cannot_be_opened_names_the_pid_and_the_rights_needed(
    windows: ModuleType, desktop: FakeWindows
) -> None:
    desktop.unopenable = True
    with pytest.raises(MemoryAccessError) as raised:
        DesktopBackend(profile(), platform=windows.WindowsPlatform(), guardian=False)
    message = str(raised.value)
    assert f"process {GAME_PID}" in message and "same user" in message and "administrator" in message


def test_a_missing_module_lists_the_loaded_ones(windows: ModuleType, desktop: FakeWindows) -> None:
    variables = {"x": {"module": "game.dll", "pointers": [0x10], "type": "u8"}}
    with pytest.raises(MemoryAccessError, match=r"no module 'game.dll'.*supertux2.exe, SDL2.dll"):
        DesktopBackend(profile(variables=variables), platform=windows.WindowsPlatform(), guardian=False)


# -- the backend on Windows ----------------------------------------------------------------------------


def test_steps_hold_the_actions_keys_capture_the_client_area_and_a_fallback_releases_everything(
    windows: ModuleType, desktop: FakeWindows
) -> None:
    game_memory(desktop, 8, x=0.0, coins=0)
    backend = DesktopBackend(profile(), platform=windows.WindowsPlatform(), guardian=False)
    try:
        assert desktop.foreground == [GAME_HWND]  # focused, so that the keys reach the game
        frame = backend.reset()
        assert frame.shape == (600, 800, 3) and tuple(frame[0, 0]) == (30, 20, 10)  # BGRA became RGB
        assert desktop.grabbed[-1] == {"left": 108, "top": 131, "width": 800, "height": 600}

        backend.step(2)  # Right + space
        backend.step(1)  # Right: space is let go, Right stays down
        assert desktop.sent == [("down", "right"), ("down", "space"), ("up", "space")]
        backend.step(0)  # the fallback
        assert desktop.sent[-1] == ("up", "right") and backend.keys.held == frozenset()

        backend.step(3)
        desktop.sent.clear()
    finally:
        backend.close()
    assert desktop.sent == [("up", "ctrlleft")]  # closing lets go of what was held


def test_a_fallback_action_that_presses_keys_is_refused(windows: ModuleType) -> None:
    actions = {**PROFILE["actions"], "fallback": 1}  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"fallback must press no key"):
        DesktopBackend(profile(actions=actions), platform=windows.WindowsPlatform(), guardian=False)


def test_a_window_moved_off_the_screen_repeats_the_last_picture(windows: ModuleType, desktop: FakeWindows) -> None:
    game_memory(desktop, 8, x=0.0, coins=0)
    backend = DesktopBackend(profile(), platform=windows.WindowsPlatform(), guardian=False)
    try:
        first = backend.reset()
        desktop.client_origin = (5000, 5000)
        backend.capture.refresh()
        frame, *_ = backend.step(0)
        assert np.array_equal(frame, first) and backend.capture.offscreen_frames == 1
    finally:
        backend.close()


# -- rtrl scan on Windows ----------------------------------------------------------------------------


def test_the_scan_reads_committed_readable_memory_and_knows_the_modules_images(
    windows: ModuleType, desktop: FakeWindows
) -> None:
    game_memory(desktop, 8, x=12.5, coins=0)
    desktop.extra_regions = [
        (0x0500_0000, 0x1000, MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD, MEM_PRIVATE),  # a stack's guard page
        (0x0600_0000, 0x1000, MEM_COMMIT, PAGE_READWRITE, MEM_MAPPED),  # a file view: shared, left out
        (0x0700_0000, 0x1000, 0x2000, PAGE_READWRITE, MEM_PRIVATE),  # reserved, not committed
        (0x0800_0000, 0x1000, MEM_COMMIT, PAGE_READONLY, MEM_PRIVATE),
    ]
    memory = windows.WindowsPlatform().open_memory(GAME_PID)
    regions = {region.start: region for region in memory.regions()}
    assert set(regions) == {MODULE_BASE_DATA, HEAP, PLAYER, 0x0800_0000}
    assert regions[MODULE_BASE_DATA].module == "supertux2.exe" and regions[MODULE_BASE_DATA].writable
    assert regions[HEAP].module is None and regions[HEAP].writable
    assert not regions[0x0800_0000].writable


def test_a_value_scan_and_a_pointer_scan_find_the_profiles_chain_through_pymem(
    windows: ModuleType, desktop: FakeWindows
) -> None:
    from rtrl.services.env_gateway.memory_scan import ValueScan, pointer_scan

    game_memory(desktop, 8, x=12.5, coins=0)
    memory = windows.WindowsPlatform().open_memory(GAME_PID)
    scan = ValueScan(memory, "f32")
    assert scan.first(12.5) == 1
    (candidate,) = scan.candidates()
    assert candidate.address == PLAYER + 4 and candidate.value == 12.5
    game_memory(desktop, 8, x=40.0, coins=0)
    assert scan.next("increased") == 1

    chains = pointer_scan(memory, [candidate.address], prefer="supertux2.exe").chains
    assert chains[0].module == "supertux2.exe"
    assert list(chains[0].offsets) == PROFILE["variables"]["x"]["pointers"]  # type: ignore[index]
