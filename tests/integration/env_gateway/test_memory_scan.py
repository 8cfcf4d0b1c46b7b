"""`rtrl scan` on real processes: a Python process holding known values, and the C box game under Xvfb.

The value scan's rounds are checked against a child process that writes values of every type at
addresses it reports, changes them on request and can unmap them; the whole command (`--hold` keys
sent through XTest, the pointer scan, `--verify-after-restart` across a real restart) runs against
the box game, whose chain to the player's x is known from its own `ready` line:
base(boxgame) + world -> + world.player -> + player.x.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from desktop_game import boxgame

from rtrl.scan import ScanOptions, parse_step
from rtrl.scan import main as scan_main
from rtrl.services.env_gateway import memory_scan
from rtrl.services.env_gateway.backends.desktop_linux import ProcMemory
from rtrl.services.env_gateway.memory_scan import ValueScan
from rtrl.services.env_gateway.profiles import parse_profile

WAIT_S = 20.0

# A process with one anonymous mapping of 3 MiB holding a value of each type at a known offset.
HOLDER = r"""
import ctypes, json, mmap, struct, sys
FORMATS = {"i8": "b", "u16": "H", "i32": "i", "u64": "Q", "i64": "q", "f32": "f", "f64": "d"}
OFFSETS = {name: 0x100000 + 64 * i for i, name in enumerate(FORMATS)}
region = mmap.mmap(-1, 3 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private, as a game's heap
base = ctypes.addressof(ctypes.c_char.from_buffer(region))
def put(name, value):
    struct.pack_into("<" + FORMATS[name], region, OFFSETS[name], value)
print(json.dumps({name: base + offset for name, offset in OFFSETS.items()}), flush=True)
for line in sys.stdin:
    words = line.split()
    if words[0] == "set":  # floats come as their bits: a float object here would be a second copy to find
        bits = int(words[2], 16) if FORMATS[words[1]] in "fd" else None
        if bits is None:
            put(words[1], int(words[2]))
        else:
            struct.pack_into("<I" if FORMATS[words[1]] == "f" else "<Q", region, OFFSETS[words[1]], bits)
    elif words[0] == "unmap":
        del base
        region.close()
    print("ok", flush=True)
"""


class Holder:
    """The child process: `set NAME VALUE` writes a value, `unmap` unmaps the whole region."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.addresses: dict[str, int] = json.loads(self.process.stdout.readline())

    def send(self, command: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        words = command.split()
        if words[0] == "set" and words[1] in ("f32", "f64"):
            packed = struct.pack("<f" if words[1] == "f32" else "<d", float(words[2]))
            words[2] = packed[::-1].hex()
            command = " ".join(words)
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.process.kill()
        self.process.communicate()


@pytest.fixture
def holder() -> Iterator[Holder]:
    child = Holder()
    yield child
    child.close()


@pytest.fixture
def memory(holder: Holder) -> Iterator[ProcMemory]:
    opened = ProcMemory(holder.process.pid)
    yield opened
    opened.close()


# -- value scans on a real process ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "first", "second"),
    [
        ("i8", -5, -77),
        ("u16", 60001, 60123),
        ("i32", -1234567, 7654321),
        ("u64", 2**40 + 7, 2**41 + 9),
        ("i64", -(2**40) - 3, -(2**42) - 5),
        ("f32", 3.25, -812.5),
        ("f64", 1234.625, 0.125),
    ],
)
def test_a_value_and_then_its_new_value_leave_exactly_its_address(
    holder: Holder, memory: ProcMemory, type_name: str, first: float, second: float
) -> None:
    holder.send(f"set {type_name} {first}")
    scan = ValueScan(memory, type_name, tolerance=0.0)
    assert scan.first(first) >= 1
    assert holder.addresses[type_name] in {candidate.address for candidate in scan.candidates()}
    holder.send(f"set {type_name} {second}")
    assert scan.next("value", second) == 1
    (found,) = scan.candidates()
    assert (found.address, found.value) == (holder.addresses[type_name], second)
    assert found.where.startswith("anonymous ")


def test_comparisons_follow_the_value_across_blocks_from_a_dense_mask_to_indices(
    holder: Holder, memory: ProcMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_scan, "BLOCK_BYTES", 1 << 20)  # the 3 MiB mapping spans several blocks
    address = holder.addresses["f32"]
    holder.send("set f32 10")
    scan = ValueScan(memory, "f32")
    everything = scan.first(None)
    assert everything > (3 << 20) // 4 // 2  # at least the mapping's zeros are plausible floats
    for command, how in [("set f32 20", "increased"), ("set f32 20", "unchanged"), ("set f32 -4.5", "decreased")]:
        holder.send(command)
        before = scan.count
        assert scan.next(how) <= before
        assert address in {candidate.address for candidate in scan.candidates()}, how
    assert any(block.indices is not None for block in scan.blocks)  # few left: kept as indices
    holder.send("set f32 7")
    assert scan.next("changed") >= 1
    holder.send("set f32 7.25")
    assert [candidate.address for candidate in scan.candidates() if candidate.address == address] == [address]
    assert scan.next("value", 7.25) >= 1 and scan.candidates()[0].value == 7.25


def test_a_float_that_becomes_nan_or_huge_is_no_candidate(holder: Holder, memory: ProcMemory) -> None:
    holder.send("set f32 5.5")
    scan = ValueScan(memory, "f32")
    scan.first(5.5)
    assert holder.addresses["f32"] in {c.address for c in scan.candidates()}
    holder.send("set f32 nan")
    scan.next("changed")
    assert holder.addresses["f32"] not in {c.address for c in scan.candidates()}
    holder.send("set f64 2.0")
    wide = ValueScan(memory, "f64")
    wide.first(2.0)
    holder.send("set f64 1e300")
    wide.next("increased")
    assert holder.addresses["f64"] not in {c.address for c in wide.candidates()}


def test_candidates_in_memory_the_game_unmapped_are_dropped(holder: Holder, memory: ProcMemory) -> None:
    holder.send("set i32 -98765")
    scan = ValueScan(memory, "i32")
    scan.first(-98765)
    holder.send("unmap")
    scan.next("unchanged")
    assert holder.addresses["i32"] not in {candidate.address for candidate in scan.candidates()}


def test_the_regions_are_the_processs_private_readable_mappings(holder: Holder, memory: ProcMemory) -> None:
    regions = memory.regions()
    python = os.path.basename(os.path.realpath(sys.executable))
    assert [region.start for region in regions] == sorted(region.start for region in regions)
    assert any(region.name == "[heap]" and region.writable for region in regions)
    assert any(region.module == python for region in regions)
    assert not any(region.name in ("[vvar]", "[vsyscall]") or region.name.startswith("/dev/") for region in regions)
    assert any(region.start <= holder.addresses["f32"] < region.end and region.module is None for region in regions)


# -- the command on the box game --------------------------------------------------------------------


class BoxGame:
    """A running box game whose stdout is drained (its `state` lines would fill the pipe)."""

    def __init__(self, binary: Path, display: str, title: str) -> None:
        self.process, self.ready = boxgame.launch(binary, display, title)
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            pass

    @property
    def chain(self) -> list[int]:
        return [self.ready["world"], self.ready["world.player"], self.ready["player.x"]]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
        self._drainer.join(timeout=WAIT_S)  # ends at the pipe's end, once the game is gone
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def games(x_display: str, game_binary: Path) -> Iterator[list[BoxGame]]:
    started: list[BoxGame] = []
    yield started
    for game in started:
        game.stop()


def rtrl_scan(display: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtrl.cli", "scan", *args],
        env={**os.environ, "DISPLAY": display},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# Right for 0.4 s moves the box about 48 px; Left for 0.2 s back about 24; then it rests.
FIND_X = ["--unknown", "--hold", "Right", "0.4s", "--increased", "--hold", "Left", "0.2s", "--decreased"]
FIND_X += ["--wait", "0.3s", "--unchanged", "--hold", "Right", "0.2s", "--increased"]


def test_scan_holds_keys_narrows_to_x_and_prints_a_profile_block_that_reads_it(
    x_display: str, game_binary: Path, games: list[BoxGame], tmp_path: Path
) -> None:
    game = BoxGame(game_binary, x_display, "rtrl scan box")
    games.append(game)
    result = rtrl_scan(
        x_display, str(game.process.pid), "--type", "f32", *FIND_X, "--pointers", "--name", "x", "--json"
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [step["step"] for step in found["steps"]][:3] == ["unknown", "hold Right 0.4s", "increased"]
    assert found["steps"][0]["candidates"] > found["steps"][2]["candidates"] > 0
    chains = [chain["pointers"] for chain in found["chains"]]
    assert game.chain in chains, chains
    assert found["chains"][0]["module"] == "boxgame"

    # The block is a profile's variable as it is: it loads, and the gateway's reader follows it to x.
    block = found["toml"]
    assert block.startswith("[variables.x]")
    import tomllib

    variables = tomllib.loads(block)["variables"]
    profile = parse_profile(
        {
            "game": {"name": "box", "backend": "desktop"},
            "window": {"process": "boxgame"},
            "actions": {"keys": [[]], "fallback": 0},
            "variables": variables,
        },
        tmp_path / "box.toml",
    )
    from rtrl.services.env_gateway.backends.desktop import VariableReader

    memory = ProcMemory(game.process.pid)
    try:
        x = VariableReader(memory, profile.variables).read_all()["x"]
        truth = memory.read(memory.module_base("boxgame") + game.ready["world"], 8)
        world = int.from_bytes(truth, "little")
        player = int.from_bytes(memory.read(world + game.ready["world.player"], 8), "little")
        import struct

        assert (
            x == struct.unpack("<f", memory.read(player + game.ready["player.x"], 4))[0] == found["chains"][0]["value"]
        )
    finally:
        memory.close()


def test_chains_are_checked_again_after_the_game_restarts(
    x_display: str, game_binary: Path, games: list[BoxGame]
) -> None:
    first = BoxGame(game_binary, x_display, "rtrl scan restart")
    games.append(first)
    after = ["--verify-after-restart", "--hold", "Right", "0.3s", "--increased", "--json"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rtrl.cli",
            "scan",
            str(first.process.pid),
            "--type",
            "f32",
            *FIND_X,
            "--pointers",
            *after,
        ],
        env={**os.environ, "DISPLAY": x_display},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        said: list[str] = []
        for line in process.stderr:
            said.append(line)
            if line.startswith("restart the game now"):
                break
        else:
            pytest.fail(f"rtrl scan never asked for a restart: {''.join(said)}")
        first.stop()
        second = BoxGame(game_binary, x_display, "rtrl scan restart")
        games.append(second)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 0, "".join(said) + stderr
    found = json.loads(stdout)
    assert found["pid"] == second.process.pid != first.process.pid
    assert second.chain in [chain["pointers"] for chain in found["chains"]]
    assert [step["step"] for step in found["steps"]][-3:] == ["verify-after-restart", "hold Right 0.3s", "increased"]
    assert all(chain["value"] > 0 for chain in found["chains"])  # x went up from 0 in the new game


def test_steps_typed_on_stdin_run_like_options(x_display: str, game_binary: Path, games: list[BoxGame]) -> None:
    game = BoxGame(game_binary, x_display, "rtrl scan stdin")
    games.append(game)
    typed = "unknown\nhold Right 0.4s\n+\nfoo\nhold Left 0.2s\n-\nwait 0.3s\nunchanged\nlist\nquit\n"
    result = rtrl_scan(x_display, str(game.process.pid), "--type", "f32", stdin=typed)
    assert result.returncode == 0, result.stderr
    assert "rtrl scan: 'foo' is not a step" in result.stderr  # a typo is said, and the scan goes on
    assert "increased:" in result.stderr and "unchanged:" in result.stderr
    assert "candidates" in result.stdout


# -- bad input --------------------------------------------------------------------------------------


def test_bad_input_is_one_sentence_and_exit_code_2(x_display: str, game_binary: Path, games: list[BoxGame]) -> None:
    game = BoxGame(game_binary, x_display, "rtrl scan errors")
    games.append(game)
    pid = str(game.process.pid)
    cases: list[tuple[list[str], str]] = [
        (["no-such-game-here", "--unknown"], "no running process is named 'no-such-game-here'; start the game first"),
        (["999999999", "--unknown"], "no process has pid 999999999"),
        ([pid, "--increased"], "the first scan needs a value (--value N) or --unknown"),
        ([pid, "--type", "u8", "--value", "300"], "300 is not a u8 (0..255); pick another --type"),
        ([pid, "--type", "f32", "--value", "123456.75", "--tolerance", "0"], "no candidates are left after value"),
        ([pid, "--type", "f32", "--unknown", "--pointers"], "addresses are left; narrow them to 64 or fewer"),
        ([pid, "--verify-after-restart"], "run --pointers before it"),
        ([pid, "--hold", "Right", "soon"], "'soon' is not a duration"),
        ([pid, "--name", "not a name", "--unknown"], "is not a variable name"),
    ]
    for args, sentence in cases:
        result = rtrl_scan(x_display, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert sentence in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_process_whose_memory_cannot_be_opened_names_the_permission(holder: Holder) -> None:
    """Another user's process. As root, a forked copy of this process gives up root and scans the holder
    (root's); otherwise this process scans init. The copy is forked, not started: the interpreter and
    the scan's modules are loaded already, where an unprivileged user may not be able to load them."""
    target = str(holder.process.pid if os.geteuid() == 0 else 1)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked copy, which reports through the pipe
        code = 1
        try:
            sys.stderr = open(write_end, "w")  # noqa: SIM115 - the copy ends with os._exit below
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            code = scan_main(ScanOptions(target=target, steps=[parse_step(["unknown"])]))
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as said:
        stderr = said.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 2, stderr
    assert "permission denied" in stderr and "ptrace_scope" in stderr, stderr


def test_a_step_parses_as_it_reads() -> None:
    assert str(parse_step(["hold", "Right+space", "500ms"])) == "hold Right+space 0.5s"
    assert parse_step(["=", "0x10"]).value == 16
    assert parse_step(["restart"]).kind == "verify-after-restart"
    with pytest.raises(ValueError, match="takes N"):
        parse_step(["value"])
