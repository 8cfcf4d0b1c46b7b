"""The desktop backend's Linux part: X11 windows and XTest keys through python-xlib, /proc memory reads.

Windows are found by walking the X window tree for a viewable window whose `_NET_WM_NAME`/`WM_NAME`
contains the profile's title and/or whose `_NET_WM_PID` is a process with the profile's name.
Keys are sent with the XTEST extension (the same path `xdotool` uses), so they reach the focused
window exactly like a keyboard's. Memory is read with pread on /proc/<pid>/mem, which the kernel
allows to a process that may ptrace the game: the same user, and Yama's ptrace_scope 0 (or
CAP_SYS_PTRACE); module bases come from /proc/<pid>/maps.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Any

import mss
from Xlib import XK, X
from Xlib import display as xdisplay
from Xlib import error as xerror
from Xlib.ext import xtest

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

PTRACE_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")
# How many window titles an error message lists, to help fix a title that does not match.
TITLES_SHOWN = 10
# ELF e_ident[EI_CLASS]: 1 = 32-bit, 2 = 64-bit.
_ELF_POINTER_SIZES = {1: 4, 2: 8}


def _open_display(name: str | None) -> xdisplay.Display:
    try:
        return xdisplay.Display(name)
    except (xerror.DisplayError, OSError) as error:
        shown = name or os.environ.get("DISPLAY") or "(DISPLAY is not set)"
        raise WindowNotFoundError(
            f"cannot connect to the X display {shown} ({error}); run the gateway in the game's X session with "
            "DISPLAY set to the display the game is on (e.g. DISPLAY=:0)."
        ) from error


def _process_names(pid: int) -> set[str]:
    """The names a user might call the process by: its comm, and the file names of its exe and argv[0]."""
    names: set[str] = set()
    proc = Path(f"/proc/{pid}")
    try:
        names.add(proc.joinpath("comm").read_text().strip())
        argv0 = proc.joinpath("cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        names.add(os.path.basename(argv0))
        names.add(os.path.basename(os.readlink(proc / "exe")))
    except OSError:
        pass  # the process exited, or its exe belongs to another user: the names found so far will do
    names.discard("")
    return names


def _name_variants(name: str) -> set[str]:
    # A profile written for Windows names "supertux2.exe"; the native Linux build is "supertux2", and
    # under Wine the name keeps its ".exe". Either spelling finds either.
    stem = name[:-4] if name.lower().endswith(".exe") else name
    return {name, stem, stem + ".exe"}


def _matches_process(pid: int | None, process: str) -> bool:
    if pid is None:
        return False
    names = _process_names(pid)
    # comm is cut to 15 characters by the kernel.
    return any(variant in names or variant[:15] in names for variant in _name_variants(process))


def _pids_named(process: str) -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _matches_process(int(entry.name), process)
    ]


class X11Window:
    """A client window on an X display; owns its own display connection."""

    def __init__(self, display: xdisplay.Display, window: Any, title: str, pid: int | None) -> None:
        self._display = display
        self._window = window
        self._title = title
        self._pid = pid
        self._root = display.screen().root

    @property
    def title(self) -> str:
        return self._title

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def window_id(self) -> int:
        return int(self._window.id)

    @property
    def display_name(self) -> str:
        return str(self._display.get_display_name())

    def _top_level(self) -> Any:
        # Under a window manager the client window sits inside the manager's frame, a child of the root.
        window = self._window
        while True:
            parent = window.query_tree().parent
            if parent is None or parent.id == self._root.id:
                return window
            window = parent

    def rect(self, capture: str) -> ScreenRect:
        window = self._top_level() if capture == "window" else self._window
        try:
            geometry = window.get_geometry()
            origin = self._root.translate_coords(window, 0, 0)
        except xerror.XError as error:
            raise DesktopError(
                f"the game window {self._title!r} cannot be located ({error}); is it still open?"
            ) from error
        return ScreenRect(int(origin.x), int(origin.y), int(geometry.width), int(geometry.height))

    def exists(self) -> bool:
        try:
            self._window.get_attributes()
        except xerror.BadWindow:
            return False
        return True

    def focus(self) -> None:
        # A window manager may refuse or delay focus; failures are harmless because the keys are also
        # released by the guardian, so they are only logged.
        def report(error: Any, request: Any) -> None:
            log.warning("could not focus the game window %r: %s", self._title, error)

        try:
            self._window.configure(stack_mode=X.Above, onerror=report)
            self._display.set_input_focus(self._window, X.RevertToParent, X.CurrentTime, onerror=report)
            self._display.sync()
        except xerror.XError as error:
            log.warning("could not focus the game window %r: %s", self._title, error)

    def close(self) -> None:
        self._display.close()


class XTestKeys:
    """Presses and releases keys with the XTEST extension; keys are X keysym names."""

    platform = "linux"

    def __init__(self, display_name: str | None) -> None:
        self._display = _open_display(display_name)
        if not self._display.has_extension("XTEST"):
            self._display.close()
            raise InputError(
                f"the X server of {display_name} has no XTEST extension, so keys cannot be sent; start it with "
                "XTEST enabled (the default for Xorg and Xvfb)."
            )
        self._keycodes: dict[str, int] = {}

    def native_key(self, key: str) -> str:
        keysym = XK.string_to_keysym(key)
        if keysym == X.NoSymbol:
            raise InputError(
                f"key {key!r} in the profile is not an X keysym name; use names such as Left, Right, Up, Down, "
                "space, Return, Control_L, a (keysymdef.h without the XK_ prefix)."
            )
        keycode = self._display.keysym_to_keycode(keysym)
        if keycode == 0:
            raise InputError(f"the keyboard of X display {self._display.get_display_name()} has no key for {key!r}.")
        self._keycodes[key] = keycode
        return key

    def press(self, key: str) -> None:
        xtest.fake_input(self._display, X.KeyPress, self._keycodes[key])
        self._display.flush()

    def release(self, key: str) -> None:
        xtest.fake_input(self._display, X.KeyRelease, self._keycodes[key])
        self._display.flush()

    def guardian_options(self) -> dict[str, Any]:
        return {"display": self._display.get_display_name()}

    def close(self) -> None:
        # A round trip first: a release sent just before the connection closes can otherwise be lost,
        # leaving the key held in the game's eyes (SDL then misses the next press of that key).
        with contextlib.suppress(xerror.XError, OSError):  # the X server went away: nothing is held there
            self._display.sync()
        self._display.close()


class ProcMemory:
    """Reads another process's memory through /proc/<pid>/mem (see the module docstring for permissions)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError as error:
            raise MemoryAccessError(permission_message(pid)) from error
        except FileNotFoundError as error:
            raise MemoryAccessError(f"process {pid} has exited; start the game again.") from error
        self._pointer_size: int | None = None

    def _maps(self) -> list[tuple[int, int, str, str]]:
        """/proc/<pid>/maps as (start, end, permissions, path) with the path "" for anonymous memory."""
        try:
            text = Path(f"/proc/{self.pid}/maps").read_text()
        except OSError as error:
            raise MemoryAccessError(
                f"cannot read /proc/{self.pid}/maps ({error.strerror}); {permission_message(self.pid)}"
            ) from error
        mappings = []
        for line in text.splitlines():
            fields = line.split(maxsplit=5)
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            path = fields[5].removesuffix(" (deleted)") if len(fields) == 6 else ""
            mappings.append((start, end, fields[1], path))
        return mappings

    def module_base(self, module: str) -> int:
        base = None
        files: list[str] = []
        for start, _, _, path in self._maps():
            if not path or path.startswith("["):
                continue  # anonymous memory, [heap], [stack], [vdso]
            if path not in files:
                files.append(path)
            if path == module or os.path.basename(path) in _name_variants(module):
                base = start if base is None else min(base, start)
        if base is None:
            names = ", ".join(os.path.basename(f) for f in files[:12])
            raise MemoryAccessError(
                f"process {self.pid} has no module {module!r} loaded (its modules include: {names}); "
                "set the variable's module to one of them (usually the game's executable)."
            )
        return base

    def regions(self) -> list[MemoryRegion]:
        # A module's .bss often continues past its last file-backed page as an anonymous mapping right
        # after it: that is static memory of the module too (where a game's global pointers live).
        regions: list[MemoryRegion] = []
        data_module: str | None = None  # the module whose writable data ends where the next mapping starts
        data_end = -1
        for start, end, permissions, path in self._maps():
            module = None
            if path.startswith("/") and not path.startswith("/dev/"):
                module = os.path.basename(path)
            elif not path and start == data_end:
                module = data_module
            data_module, data_end = (module, end) if permissions[1] == "w" else (None, -1)
            # Only private memory the process can read: not device or shared mappings (GPU buffers, shm),
            # whose reads can block or fault, nor the kernel's [vvar]/[vsyscall] pages.
            if permissions[0] != "r" or permissions[3] != "p" or path.startswith("/dev/"):
                continue
            if path in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            regions.append(MemoryRegion(start, end, writable=permissions[1] == "w", module=module, name=path))
        return regions

    def pointer_size(self) -> int:
        if self._pointer_size is None:
            try:
                with open(f"/proc/{self.pid}/exe", "rb") as exe:
                    ident = exe.read(5)
            except OSError:
                ident = b""
            self._pointer_size = _ELF_POINTER_SIZES.get(ident[4], 8) if ident[:4] == b"\x7fELF" else 8
        return self._pointer_size

    def read(self, address: int, size: int) -> bytes:
        try:
            data = os.pread(self._fd, size, address)
        except OverflowError as error:
            raise MemoryReadError(f"0x{address:x} is not an address in process {self.pid}") from error
        except OSError as error:
            if error.errno in (errno.EIO, errno.EFAULT):
                raise MemoryReadError(f"0x{address:x} is not mapped in process {self.pid}") from error
            raise MemoryAccessError(f"reading process {self.pid} failed ({error.strerror}).") from error
        if len(data) < size:
            if not Path(f"/proc/{self.pid}").exists() or not data:
                raise MemoryAccessError(f"process {self.pid} has exited; start the game again and restart the gateway.")
            raise MemoryReadError(f"only {len(data)} of {size} bytes at 0x{address:x} are mapped in process {self.pid}")
        return data

    def close(self) -> None:
        os.close(self._fd)


def permission_message(pid: int) -> str:
    """Why /proc/<pid>/mem cannot be opened and what allows it."""
    try:
        scope = PTRACE_SCOPE.read_text().strip()
    except OSError:
        scope = None
    scope_note = f" (it is {scope} now)" if scope is not None else ""
    return (
        f"cannot read the memory of process {pid}: permission denied. Reading another process's memory needs "
        f"ptrace permission: run the gateway (or rtrl scan) as the same user as the game, and set "
        f"/proc/sys/kernel/yama/ptrace_scope to 0{scope_note} with `sudo sysctl kernel.yama.ptrace_scope=0`, or give "
        "the gateway's python CAP_SYS_PTRACE (`sudo setcap cap_sys_ptrace+ep <python>`; in a container: "
        "--cap-add SYS_PTRACE and --pid=host)."
    )


class LinuxPlatform:
    """X11 + /proc: the Linux side of the desktop backend."""

    name = "linux"

    def __init__(self, display_name: str | None = None) -> None:
        self.display_name = display_name

    def find_window(self, title: str | None, process: str | None) -> X11Window:
        display = _open_display(self.display_name)
        try:
            window = self._find(display, title, process)
        except BaseException:
            display.close()
            raise
        # Capture and keys go to the display the window was found on, even when DISPLAY changes later.
        self.display_name = window.display_name
        return window

    def _find(self, display: xdisplay.Display, title: str | None, process: str | None) -> X11Window:
        net_wm_name = display.intern_atom("_NET_WM_NAME")
        net_wm_pid = display.intern_atom("_NET_WM_PID")
        candidates: list[tuple[Any, str, int | None, int]] = []
        seen_titles: list[str] = []
        pending = [display.screen().root]
        while pending:
            window = pending.pop()
            try:
                pending.extend(window.query_tree().children)
                attributes = window.get_attributes()
                name = _window_title(window, net_wm_name)
                pid_property = window.get_full_property(net_wm_pid, X.AnyPropertyType)
                geometry = window.get_geometry() if name or pid_property else None
            except xerror.XError:
                continue  # it was destroyed while we looked
            if attributes.map_state != X.IsViewable or geometry is None:
                continue
            pid = int(pid_property.value[0]) if pid_property is not None and len(pid_property.value) else None
            if name:
                seen_titles.append(name)
            candidates.append((window, name, pid, int(geometry.width) * int(geometry.height)))

        matches = [
            c
            for c in candidates
            if (title is None or title in c[1]) and (process is None or _matches_process(c[2], process))
        ]
        pid_override: int | None = None
        if not matches and title is not None and process is not None:
            # Some toolkits set no _NET_WM_PID: then the title finds the window and the name finds the pid.
            pids = _pids_named(process)
            titled = [c for c in candidates if title in c[1]]
            if titled and len(pids) == 1:
                matches, pid_override = titled, pids[0]
        if not matches:
            wanted = " and ".join(
                part
                for part in (
                    f"a title containing {title!r}" if title else "",
                    f"process {process!r}" if process else "",
                )
                if part
            )
            shown = ", ".join(repr(t) for t in seen_titles[:TITLES_SHOWN]) or "none"
            raise WindowNotFoundError(
                f"no window with {wanted} on X display {display.get_display_name()}; start the game first (it must "
                f"run on the display in DISPLAY), or fix window.title/window.process in the profile. Windows "
                f"there: {shown}."
            )
        matches.sort(key=lambda c: c[3], reverse=True)
        if len(matches) > 1:
            log.warning("%d windows match; using the largest, %r", len(matches), matches[0][1])
        window, name, pid, _ = matches[0]
        return X11Window(display, window, name, pid_override if pid_override is not None else pid)

    def process_name(self, pid: int) -> str | None:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            return None

    def find_processes(self, name: str) -> list[int]:
        return _pids_named(name)

    def open_memory(self, pid: int) -> ProcMemory:
        return ProcMemory(pid)

    def open_keys(self, window: Any) -> XTestKeys:
        return XTestKeys(window.display_name if isinstance(window, X11Window) else self.display_name)

    def open_capture(self) -> Any:
        try:
            return mss.MSS(display=self.display_name) if self.display_name else mss.MSS()
        except mss.exception.ScreenShotError as error:
            raise DesktopError(f"cannot capture the X screen ({error}); check DISPLAY.") from error

    def screen_rect(self, capture: Any) -> ScreenRect:
        whole = capture.monitors[0]
        return ScreenRect(whole["left"], whole["top"], whole["width"], whole["height"])


def _window_title(window: Any, net_wm_name: int) -> str:
    prop = window.get_full_property(net_wm_name, X.AnyPropertyType)
    if prop is not None and prop.value:
        value = prop.value
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    name = window.get_wm_name()
    if isinstance(name, bytes):
        return name.decode("latin-1")
    return name or ""
