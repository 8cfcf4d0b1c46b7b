"""The desktop backend's Windows part: win32 windows (pywin32), pydirectinput keys, pymem memory reads.

This is the seed user's setup behind the backend's protocols: windows are found with EnumWindows by
title substring and/or the owning process's executable name, the client area is located with
GetClientRect + ClientToScreen, keys go through pydirectinput (SendInput with scan codes, which
DirectX games read), and memory through pymem (OpenProcess + ReadProcessMemory). Install with
`pip install "rtrl[windows]"`. Profiles name keys as X keysyms (`Left`, `space`, `Control_L`); they
are mapped to pydirectinput's names here.
"""

from __future__ import annotations

import locale
import logging
from typing import Any

import mss
import pydirectinput
import pymem
import pymem.exception
import pymem.memory
import pymem.process
import pywintypes
import win32con
import win32gui
import win32process

from rtrl.services.env_gateway.backends.desktop import (
    DesktopError,
    InputError,
    MemoryAccessError,
    MemoryReadError,
    MemoryRegion,
    ScreenRect,
    WindowNotFoundError,
)

log = logging.getLogger(__name__)

# VirtualQueryEx's MEMORY_BASIC_INFORMATION: committed pages, their protection and kind (winnt.h).
MEM_COMMIT = 0x1000
MEM_MAPPED = 0x40000
PAGE_GUARD = 0x100
PAGE_READABLE = 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80  # READONLY, READWRITE, WRITECOPY, EXECUTE_*
PAGE_WRITABLE = 0x04 | 0x08 | 0x40 | 0x80  # READWRITE, WRITECOPY, EXECUTE_READWRITE, EXECUTE_WRITECOPY
USER_SPACE_END = {8: 0x7FFF_FFFF_0000, 4: 0xFFFF_0000}

TITLES_SHOWN = 10

# X keysym names (what profiles use) -> pydirectinput key names, where they differ beyond case.
X_KEYSYM_TO_DIRECTINPUT = {
    "Return": "enter",
    "KP_Enter": "enter",
    "Escape": "esc",
    "BackSpace": "backspace",
    "Shift_L": "shiftleft",
    "Shift_R": "shiftright",
    "Control_L": "ctrlleft",
    "Control_R": "ctrlright",
    "Alt_L": "altleft",
    "Alt_R": "altright",
    "Super_L": "winleft",
    "Super_R": "winright",
    "Prior": "pageup",
    "Next": "pagedown",
    "Caps_Lock": "capslock",
    "Num_Lock": "numlock",
    "Scroll_Lock": "scrolllock",
    "Print": "printscreen",
    "minus": "-",
    "equal": "=",
    "comma": ",",
    "period": ".",
    "slash": "/",
    "backslash": "\\",
    "semicolon": ";",
    "apostrophe": "'",
    "grave": "`",
    "bracketleft": "[",
    "bracketright": "]",
}


def directinput_key(key: str) -> str:
    """pydirectinput's name of a profile key (an X keysym name, or already a pydirectinput name)."""
    name = X_KEYSYM_TO_DIRECTINPUT.get(key, key.lower())
    if name not in pydirectinput.KEYBOARD_MAPPING or pydirectinput.KEYBOARD_MAPPING[name] is None:
        raise InputError(
            f"key {key!r} in the profile cannot be sent on Windows: pydirectinput knows no key {name!r}; use X "
            "keysym names such as Left, Right, Up, Down, space, Return, Control_L, a."
        )
    return name


class Win32Window:
    """A top-level window, addressed by its handle."""

    def __init__(self, hwnd: int, title: str, pid: int) -> None:
        self.hwnd = hwnd
        self._title = title
        self._pid = pid

    @property
    def title(self) -> str:
        return self._title

    @property
    def pid(self) -> int | None:
        return self._pid

    def rect(self, capture: str) -> ScreenRect:
        try:
            if capture == "window":
                left, top, right, bottom = win32gui.GetWindowRect(self.hwnd)
                return ScreenRect(left, top, right - left, bottom - top)
            _, _, width, height = win32gui.GetClientRect(self.hwnd)
            left, top = win32gui.ClientToScreen(self.hwnd, (0, 0))
        except pywintypes.error as error:
            raise DesktopError(
                f"the game window {self._title!r} cannot be located ({error}); is it still open?"
            ) from error
        return ScreenRect(left, top, width, height)

    def exists(self) -> bool:
        return bool(win32gui.IsWindow(self.hwnd))

    def focus(self) -> None:
        try:
            if win32gui.IsIconic(self.hwnd):
                win32gui.ShowWindow(self.hwnd, win32con.SW_RESTORE)
            win32gui.SetForegroundWindow(self.hwnd)
        except pywintypes.error as error:
            # Windows lets only the foreground process hand the focus on; the user can click the game.
            log.warning("could not bring the game window %r to the front (%s); click it once", self._title, error)

    def close(self) -> None:
        pass  # a window handle needs no closing


class DirectInputKeys:
    """Presses and releases keys with pydirectinput (SendInput scan codes)."""

    platform = "windows"

    def native_key(self, key: str) -> str:
        return directinput_key(key)

    def _send(self, send: Any, key: str) -> None:
        try:
            inserted = send(key, _pause=False)  # pydirectinput sleeps 0.1 s after each call otherwise
        except pydirectinput.FailSafeException as error:
            raise InputError(
                "pydirectinput's fail-safe stopped the input because the mouse is in the top-left corner of the "
                "screen; move it away and restart the gateway."
            ) from error
        if inserted is False:
            raise InputError(
                f"Windows rejected the input for key {key!r}; a game running as administrator only accepts input "
                "from a program that also runs as administrator: start the gateway from an administrator shell."
            )

    def press(self, key: str) -> None:
        self._send(pydirectinput.keyDown, key)

    def release(self, key: str) -> None:
        self._send(pydirectinput.keyUp, key)

    def guardian_options(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class PymemMemory:
    """Reads the game's memory with pymem (OpenProcess + ReadProcessMemory)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._pm = pymem.Pymem(pid)
        except (pymem.exception.PymemError, pymem.exception.WinAPIError, OSError) as error:
            raise MemoryAccessError(
                f"cannot open process {pid} to read its memory ({error}); run the gateway (or rtrl scan) as the same "
                "user as the game, and as administrator when the game runs as administrator (games with anti-cheat "
                "protection cannot be read at all)."
            ) from error

    def module_base(self, module: str) -> int:
        found = pymem.process.module_from_name(self._pm.process_handle, module)
        if found is None:
            names = ", ".join(m.name for m in list(self._pm.list_modules())[:12])
            raise MemoryAccessError(
                f"process {self.pid} has no module {module!r} loaded (its modules include: {names}); set the "
                "variable's module to one of them (usually the game's .exe)."
            )
        return int(found.lpBaseOfDll)

    def pointer_size(self) -> int:
        return 8 if pymem.process.is_64_bit(self._pm.process_handle) else 4

    def read(self, address: int, size: int) -> bytes:
        try:
            return bytes(self._pm.read_bytes(address, size))
        except (pymem.exception.MemoryReadError, pymem.exception.WinAPIError) as error:
            raise MemoryReadError(f"0x{address:x} is not readable in process {self.pid} ({error})") from error

    def regions(self) -> list[MemoryRegion]:
        modules = [
            (int(m.lpBaseOfDll), int(m.lpBaseOfDll) + int(m.SizeOfImage), str(m.name)) for m in self._pm.list_modules()
        ]
        regions: list[MemoryRegion] = []
        address, end_of_space = 0, USER_SPACE_END[self.pointer_size()]
        while address < end_of_space:
            try:
                info = pymem.memory.virtual_query(self._pm.process_handle, address)
            except (pymem.exception.WinAPIError, OSError):
                break  # past the last region
            start, size = int(info.BaseAddress or 0), int(info.RegionSize)
            if size <= 0:
                break
            protect = int(info.Protect)
            # Committed, readable, not a guard page, and private or an image: file views and shared
            # sections (MEM_MAPPED) are left out, as shared mappings are on Linux.
            if (
                info.State == MEM_COMMIT
                and protect & PAGE_READABLE
                and not protect & PAGE_GUARD
                and info.Type != MEM_MAPPED
            ):
                module = next((name for low, high, name in modules if low <= start < high), None)
                writable = bool(protect & PAGE_WRITABLE)
                regions.append(MemoryRegion(start, start + size, writable, module, module or ""))
            address = start + size
        return regions

    def close(self) -> None:
        self._pm.close_process()


def _processes_named(process: str) -> set[int]:
    wanted = process.lower()
    encoding = locale.getpreferredencoding()
    # list_processes yields one entry object that it refills, so each entry is read at once.
    return {
        int(entry.th32ProcessID)
        for entry in pymem.process.list_processes()
        if entry.szExeFile.decode(encoding, errors="replace").lower() == wanted
    }


class WindowsPlatform:
    """win32 + pydirectinput + pymem: the Windows side of the desktop backend."""

    name = "windows"

    def find_window(self, title: str | None, process: str | None) -> Win32Window:
        pids = _processes_named(process) if process is not None else None
        windows: list[tuple[int, str, int]] = []

        def collect(hwnd: int, _: Any) -> bool:
            if win32gui.IsWindowVisible(hwnd):
                windows.append((hwnd, win32gui.GetWindowText(hwnd), win32process.GetWindowThreadProcessId(hwnd)[1]))
            return True

        win32gui.EnumWindows(collect, None)
        matches = [w for w in windows if (title is None or title in w[1]) and (pids is None or w[2] in pids)]
        if not matches:
            wanted = " and ".join(
                part
                for part in (
                    f"a title containing {title!r}" if title else "",
                    f"process {process!r}" if process else "",
                )
                if part
            )
            running = (
                "" if pids is None else (" (no such process is running)" if not pids else f" (pids {sorted(pids)})")
            )
            shown = ", ".join([repr(w[1]) for w in windows if w[1]][:TITLES_SHOWN])
            raise WindowNotFoundError(
                f"no window with {wanted}{running}; start the game first and run the gateway in the same desktop "
                f"session (not as a service), or fix window.title/window.process in the profile. Windows there: "
                f"{shown or 'none'}."
            )
        if len(matches) > 1:
            log.warning("%d windows match; using the first, %r", len(matches), matches[0][1])
        hwnd, name, pid = matches[0]
        return Win32Window(hwnd, name, pid)

    def process_name(self, pid: int) -> str | None:
        encoding = locale.getpreferredencoding()
        for entry in pymem.process.list_processes():
            if int(entry.th32ProcessID) == pid:
                return str(entry.szExeFile.decode(encoding, errors="replace"))
        return None

    def find_processes(self, name: str) -> list[int]:
        wanted = name if name.lower().endswith(".exe") else name + ".exe"
        return sorted(_processes_named(wanted))

    def open_memory(self, pid: int) -> PymemMemory:
        return PymemMemory(pid)

    def open_keys(self, window: Any) -> DirectInputKeys:
        return DirectInputKeys()

    def open_capture(self) -> Any:
        try:
            return mss.MSS()
        except mss.exception.ScreenShotError as error:
            raise DesktopError(f"cannot capture the screen ({error}).") from error

    def screen_rect(self, capture: Any) -> ScreenRect:
        whole = capture.monitors[0]
        return ScreenRect(whole["left"], whole["top"], whole["width"], whole["height"])
