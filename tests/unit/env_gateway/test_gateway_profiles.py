"""Game profiles: the shipped ones load, every invalid field is named, and settings pick the right one."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from rtrl.config import SettingsError
from rtrl.services.env_gateway.profiles import (
    DeathZoneReward,
    MilestoneReward,
    ProfileError,
    Region,
    ScrollSignal,
    StagnationRule,
    TemplateReward,
    TemplateRule,
    TimeCapRule,
    VariableSpec,
    XTeleportRule,
    load_profile,
    parse_profile,
    rom_header_title,
    shipped_profiles,
)
from rtrl.services.env_gateway.settings import GatewaySettings

PYBOY_PROFILE: dict[str, Any] = {
    "game": {"name": "test", "backend": "pyboy"},
    "rom": {"sha256": "any"},
    "actions": {"buttons": [[], ["a"], ["right", "a"]]},
    "variables": {"counter": {"address": 0xC001}, "over": {"address": 0xC002}},
    "rewards": [{"kind": "delta", "variable": "counter", "scale": 0.5}],
    "termination": [{"kind": "equals", "variable": "over", "value": 1}],
}
DESKTOP_PROFILE: dict[str, Any] = {
    "game": {"name": "test", "backend": "desktop"},
    "window": {"title": "Game"},
    "actions": {"keys": [[], ["Right"], ["Right", "space"]], "pause_key": "Escape"},
    "variables": {"x": {"module": "game.exe", "pointers": [0x10, 0x8], "type": "f32"}},
    "rewards": [{"kind": "death_zone", "variable_x": "x", "radius_px": 32, "penalty": -1.0}],
    "termination": [{"kind": "x_teleport", "variable": "x", "relative_drop": 0.5, "absolute_drop_px": 100}],
}


def with_change(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of `base` with one field set (or removed when `value` is ...)."""
    data = copy.deepcopy(base)
    *parents, last = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


def test_shipped_profiles_load() -> None:
    assert {"tetris", "pokemon_battles", "supertux"} <= set(shipped_profiles())
    for name in shipped_profiles():
        profile = load_profile(name)
        assert profile.game.name and profile.actions.count >= 1


def test_tetris_profile_reads_the_game_wrapper_and_checks_the_rom() -> None:
    tetris = load_profile("tetris")
    assert tetris.rom is not None and tetris.rom.game_wrapper and "TETRIS" in tetris.rom.titles
    assert tetris.rom.sha1 and not tetris.rom.any_rom
    assert {spec.wrapper for spec in tetris.variables.values()} == {"score", "lines", "game_over"}
    assert tetris.frame_rate_hz == pytest.approx(59.7275)


def test_pokemon_profile_rewards_faints_as_in_the_paper() -> None:
    pokemon = load_profile("pokemon_battles")
    enemy, party = pokemon.rewards
    assert (enemy.kind, enemy.reward, party.kind, party.reward) == ("faint", 1.0, "faint", -1.0)  # type: ignore[union-attr]
    hp = pokemon.variables["party_hp_1"]
    assert (hp.address, hp.type, hp.endianness) == (0xD16C, "u16", "big")
    assert pokemon.reset.savestate is not None and pokemon.reset.savestate.name == "pokemon_battles.state"


def test_supertux_profile_expresses_every_rule_the_seed_user_configured() -> None:
    supertux = load_profile("supertux")
    assert supertux.game.backend == "desktop"
    assert supertux.window is not None and supertux.window.capture == "client"
    assert (supertux.preprocess.width, supertux.preprocess.height) == (64, 64)
    assert (supertux.preprocess.frame_stack, supertux.preprocess.frame_skip) == (4, 4)
    assert supertux.actions.pause_key == "p"
    assert ("Right", "space") in supertux.actions.inputs
    kinds = {type(rule) for rule in supertux.termination} | {type(term) for term in supertux.rewards}
    assert {TimeCapRule, StagnationRule, XTeleportRule, DeathZoneReward, MilestoneReward} <= kinds
    # The seed user's own EnvCfg values.
    rules = {type(rule): rule for rule in [*supertux.termination, *supertux.rewards]}
    assert rules[TimeCapRule].seconds == 120
    assert (rules[StagnationRule].epsilon_px, rules[StagnationRule].window_s) == (10, 4)
    assert (rules[XTeleportRule].relative_drop, rules[XTeleportRule].absolute_drop_px) == (0.5, 200)
    assert rules[DeathZoneReward].radius_px == 150
    assert rules[MilestoneReward].every_px == 500
    x = supertux.variables["x"]
    assert x.module and x.pointers and x.type == "f32"


def test_a_profile_loads_from_a_path_and_resolves_its_savestate_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        '[game]\nname = "mine"\nbackend = "pyboy"\n[rom]\nsha256 = "any"\n'
        '[actions]\nbuttons = [[], ["A", "B"]]\nfallback = 1\n'
        '[reset]\nsavestate = "start.state"\nkeys = [["start"], 30, []]\nwait_frames = 5\n',
        encoding="utf-8",
    )
    profile = load_profile(str(path))
    assert profile.actions.inputs == ((), ("a", "b"))
    assert profile.actions.names == ("noop", "a+b")
    assert profile.actions.fallback == 1
    assert profile.reset.savestate == tmp_path / "start.state"
    assert profile.reset.keys == (("start",), 30, ())
    assert profile.frame_rate_hz == pytest.approx(59.7275)


@pytest.mark.parametrize(
    ("base", "dotted", "value", "named", "expected"),
    [
        (PYBOY_PROFILE, "game.backend", "nes", "game.backend is 'nes'", '"pyboy", "desktop"'),
        (PYBOY_PROFILE, "game.name", ..., "game.name is missing", "a string"),
        (PYBOY_PROFILE, "game.frame_rate_hz", 0, "game.frame_rate_hz is 0", "a number > 0"),
        (PYBOY_PROFILE, "rom.sha256", "abc", "rom.sha256 is 'abc'", "64 hex digits"),
        (PYBOY_PROFILE, "rom.sha256", ..., "rom.sha256 is missing", "SHA-256"),
        (PYBOY_PROFILE, "rom", ..., "rom is missing", "[rom]"),
        (PYBOY_PROFILE, "actions.buttons", [[], ["jump"]], "actions.buttons[1][0] is 'jump'", "one of a, b, start"),
        (PYBOY_PROFILE, "actions.buttons", [["a", "a"]], "actions.buttons[0] is ['a', 'a']", "at most once"),
        (PYBOY_PROFILE, "actions.keys", [["Right"]], "actions.keys is", "actions.buttons in a pyboy profile"),
        (PYBOY_PROFILE, "actions.fallback", 3, "actions.fallback is 3", "between 0 and 2"),
        (PYBOY_PROFILE, "actions.names", ["x"], "actions.names is ['x']", "3 names"),
        (PYBOY_PROFILE, "preprocess.width", 0, "preprocess.width is 0", "an integer >= 1"),
        (PYBOY_PROFILE, "preprocess.grayscale", "yes", "preprocess.grayscale is 'yes'", "true or false"),
        (PYBOY_PROFILE, "preprocess.frameskip", 4, "preprocess.frameskip is not a known field", "frame_skip"),
        (PYBOY_PROFILE, "variables.counter.address", 0x10000, "variables.counter.address is 65536", "0xFFFF"),
        (PYBOY_PROFILE, "variables.counter.type", "u128", "variables.counter.type is 'u128'", '"u8"'),
        (PYBOY_PROFILE, "variables.counter.type", "bcd", "variables.counter.length is missing", "1 to 8"),
        (PYBOY_PROFILE, "variables.counter.length", 2, "variables.counter.length is 2", "no length"),
        (PYBOY_PROFILE, "variables.counter.endianness", "middle", "variables.counter.endianness", '"little"'),
        (PYBOY_PROFILE, "variables.counter.address", ..., "variables.counter.address is missing", "wrapper"),
        (PYBOY_PROFILE, "variables.counter.module", "x.exe", "variables.counter.module is 'x.exe'", "desktop-only"),
        (PYBOY_PROFILE, "rewards.0.variable", "nope", "rewards[0].variable is 'nope'", "counter, over"),
        (PYBOY_PROFILE, "rewards.0.kind", "bonus", "rewards[0].kind is 'bonus'", '"delta"'),
        (PYBOY_PROFILE, "rewards.0.scale", "big", "rewards[0].scale is 'big'", "a number"),
        (PYBOY_PROFILE, "termination.0.value", ..., "termination[0].value is missing", "a number"),
        (PYBOY_PROFILE, "termination.0.outcome", "none", "termination[0].outcome is 'none'", '"truncated"'),
        (PYBOY_PROFILE, "reset.keys", [["start"], "wait"], "reset.keys[1] is 'wait'", "a list of buttons"),
        (PYBOY_PROFILE, "reset.wait_frames", -1, "reset.wait_frames is -1", ">= 0"),
        (DESKTOP_PROFILE, "window", ..., "window is missing", "title or process"),
        (DESKTOP_PROFILE, "window.title", ..., "window.title is missing", "process"),
        (DESKTOP_PROFILE, "window.capture", "screen", "window.capture is 'screen'", '"client"'),
        (DESKTOP_PROFILE, "variables.x.pointers", [], "variables.x.pointers is missing", "non-empty list"),
        (DESKTOP_PROFILE, "variables.x.pointer_size", 2, "variables.x.pointer_size is 2", "4 or 8"),
        (DESKTOP_PROFILE, "variables.x.wrapper", "score", "variables.x.wrapper is 'score'", "desktop profile"),
        (DESKTOP_PROFILE, "rewards.0.penalty", 1.0, "rewards[0].penalty is 1.0", "<= 0"),
        (DESKTOP_PROFILE, "rewards.0.repeat_multiplier", 0.5, "rewards[0].repeat_multiplier is 0.5", ">= 1"),
        (DESKTOP_PROFILE, "termination.0.relative_drop", 1.5, "termination[0].relative_drop is 1.5", "(0, 1]"),
        (DESKTOP_PROFILE, "termination", [], "rewards is", "x_teleport rule"),
        (DESKTOP_PROFILE, "reset.savestate", "a.state", "reset.savestate is 'a.state'", "use keys"),
    ],
)
def test_an_invalid_field_is_named_with_what_was_expected(
    base: dict[str, Any], dotted: str, value: Any, named: str, expected: str
) -> None:
    with pytest.raises(ProfileError) as raised:
        parse_profile(with_change(base, dotted, value), Path("/somewhere/bad.toml"))
    message = str(raised.value)
    assert message.startswith("profile bad.toml: ")
    assert named in message and expected in message
    assert isinstance(raised.value, SettingsError)


def test_a_none_value_in_a_profile_given_as_a_dict_counts_as_absent() -> None:
    """TOML has no None, but a profile built in Python may; a number or integer then takes its default."""
    profile = parse_profile(with_change(PYBOY_PROFILE, "actions.fallback", None), Path("/somewhere/p.toml"))
    assert profile.actions.fallback == 0
    profile = parse_profile(with_change(PYBOY_PROFILE, "rewards.0.scale", None), Path("/somewhere/p.toml"))
    assert profile.rewards[0].scale == 1.0


def test_invalid_toml_and_a_missing_profile_say_what_to_fix(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[game\n", encoding="utf-8")
    with pytest.raises(ProfileError, match=r"profile broken.toml: is not valid TOML"):
        load_profile(broken)
    with pytest.raises(ProfileError, match=r"RTRL_PROFILE.*tetris"):
        load_profile("no_such_game")


@pytest.mark.parametrize(
    ("spec", "raw", "value"),
    [
        (VariableSpec("v", address=0, type="u8"), [0xFE], 254.0),
        (VariableSpec("v", address=0, type="i8"), [0xFE], -2.0),
        (VariableSpec("v", address=0, type="u16", endianness="big"), [0x01, 0x02], 258.0),
        (VariableSpec("v", address=0, type="u16"), [0x01, 0x02], 513.0),
        (VariableSpec("v", address=0, type="i32"), [0xFF, 0xFF, 0xFF, 0xFF], -1.0),
        (VariableSpec("v", address=0, type="f32"), [0x00, 0x00, 0x20, 0x41], 10.0),
        (VariableSpec("v", address=0, type="u64"), [0, 0, 0, 0, 0x01, 0, 0, 0], 2.0**32),
        (VariableSpec("v", address=0, type="i64"), [0xFE, *[0xFF] * 7], -2.0),
        (VariableSpec("v", address=0, type="bcd", length=3), [0x56, 0x34, 0x12], 123456.0),
        (VariableSpec("v", address=0, type="bcd", length=2, endianness="big"), [0x12, 0x34], 1234.0),
    ],
)
def test_variables_decode_their_bytes(spec: VariableSpec, raw: list[int], value: float) -> None:
    assert spec.size == len(raw)
    assert spec.decode(raw) == value


def fake_rom(path: Path, title: bytes) -> Path:
    header = bytearray(0x150)
    header[0x134 : 0x134 + len(title)] = title
    path.write_bytes(bytes(header))
    return path


def test_settings_pick_the_shipped_profile_by_rom_title_and_use_its_preprocessing(tmp_path: Path) -> None:
    rom = fake_rom(tmp_path / "t.gb", b"TETRIS")
    assert rom_header_title(rom) == "TETRIS"
    settings = GatewaySettings.from_env({"RTRL_ENV": f"pyboy:{rom}"})
    assert settings.profile is not None and settings.profile.game.name == "Tetris"
    supertux = GatewaySettings.from_env({"RTRL_ENV": "desktop:supertux", "RTRL_FRAME_STACK": "2"})
    assert (supertux.obs_width, supertux.obs_height, supertux.decision_interval_frames) == (64, 64, 4)
    assert supertux.frame_stack == 2  # an explicit variable wins over the profile


def test_settings_refuse_a_rom_no_profile_knows_and_a_missing_rom(tmp_path: Path) -> None:
    rom = fake_rom(tmp_path / "x.gb", b"HOMEBREW")
    with pytest.raises(SettingsError, match=r"HOMEBREW.*set RTRL_PROFILE"):
        GatewaySettings.from_env({"RTRL_ENV": f"pyboy:{rom}"})
    with pytest.raises(SettingsError, match=r"ROM file .*missing.gb not found; set RTRL_ENV=pyboy:"):
        GatewaySettings.from_env({"RTRL_ENV": f"pyboy:{tmp_path / 'missing.gb'}"})


def test_settings_refuse_a_profile_for_another_backend_or_a_gymnasium_game(tmp_path: Path) -> None:
    rom = fake_rom(tmp_path / "t.gb", b"TETRIS")
    with pytest.raises(ProfileError, match=r"game.backend is 'desktop'; expected 'pyboy'"):
        GatewaySettings.from_env({"RTRL_ENV": f"pyboy:{rom}", "RTRL_PROFILE": "supertux"})
    with pytest.raises(SettingsError, match="RTRL_PROFILE='tetris' is set"):
        GatewaySettings.from_env({"RTRL_ENV": "ale:Pong", "RTRL_PROFILE": "tetris"})


# -- screen signals and templates ------------------------------------------------------------------

SCREEN_PROFILE: dict[str, Any] = {
    "game": {"name": "test", "backend": "desktop"},
    "window": {"title": "Game"},
    "actions": {"keys": [[], ["Right"]]},
    "variables": {"lives": {"address": 0x1000}},
    "screen": {
        "progress": {"kind": "scroll", "region": [0, 40, 640, 440], "width": 64},
        "moving": {"kind": "screen_change", "min_change": 0.5},
    },
    "rewards": [{"kind": "milestone", "variable": "progress_x", "every_px": 100}],
    "termination": [
        {"kind": "template", "image": "game_over.png", "region": [200, 200, 240, 80], "threshold": 0.9},
        {"kind": "stagnation", "variable": "moving", "epsilon_px": 10, "window_s": 5},
    ],
}


@pytest.fixture
def profile_folder(tmp_path: Path) -> Path:
    """A folder with the images the screen profile names: a 120x30 banner, a uniform one, one that is no image."""
    banner = np.zeros((30, 120, 3), np.uint8)
    cv2.putText(banner, "GAME OVER", (4, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (40, 40, 230), 2)
    cv2.imwrite(str(tmp_path / "game_over.png"), banner)
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((10, 10, 3), 128, np.uint8))
    (tmp_path / "notes.png").write_text("not an image", encoding="utf-8")
    (tmp_path / "folder.png").mkdir()
    return tmp_path


def test_a_screen_profile_yields_its_variables_and_loads_its_template(profile_folder: Path) -> None:
    profile = parse_profile(SCREEN_PROFILE, profile_folder / "screen.toml")
    assert profile.screen_variables == ("progress_x", "progress_y", "moving")
    progress = profile.screen["progress"]
    assert isinstance(progress, ScrollSignal) and progress.region == Region(0, 40, 640, 440) and progress.width == 64
    assert progress.min_response == 0.15 and progress.max_shift_px is None
    (match,) = profile.templates
    assert match.signal == "termination[0]" and match.image == profile_folder / "game_over.png"
    assert match.pixels.shape == (30, 120) and match.pixels.dtype == np.uint8
    assert (match.threshold, match.downscale) == (0.9, 1)
    assert isinstance(profile.termination[0], TemplateRule) and profile.termination[0].outcome == "terminated"
    assert profile == parse_profile(SCREEN_PROFILE, profile_folder / "screen.toml")  # pixels are not compared


@pytest.mark.parametrize(
    ("dotted", "value", "named", "expected"),
    [
        ("termination.0.image", "missing.png", "termination[0].image is 'missing.png'", "missing.png does not exist"),
        ("termination.0.image", "notes.png", "termination[0].image is 'notes.png'", "OpenCV cannot decode"),
        ("termination.0.image", "folder.png", "termination[0].image is 'folder.png'", "an image file that can be read"),
        ("termination.0.image", "grey.png", "termination[0].image is 'grey.png'", "some contrast"),
        ("termination.0.image", "~nosuchuser/a.png", "termination[0].image is '~nosuchuser/a.png'", "home directory"),
        ("termination.0.image", ..., "termination[0].image is missing", "a string"),
        (
            "termination.0.region",
            [200, 200, 100, 20],
            "termination[0].image is 'game_over.png'",
            "fits in region [200, 200, 100, 20] (100x20 px); it is 120x30 px",
        ),
        ("termination.0.region", [0, 0, 10], "termination[0].region is [0, 0, 10]", "[x, y, width, height]"),
        ("termination.0.region", [-1, 0, 200, 50], "termination[0].region is [-1, 0, 200, 50]", "x and y >= 0"),
        ("termination.0.threshold", 1.5, "termination[0].threshold is 1.5", "(0, 1]"),
        ("termination.0.downscale", 0, "termination[0].downscale is 0", "an integer >= 1"),
        ("termination.0.downscale", 20, "termination[0].image is 'game_over.png'", "after downscale 20"),
        ("termination.0.outcome", "none", "termination[0].outcome is 'none'", '"terminated", "truncated"'),
        ("termination.0.reward", 1.0, "termination[0].reward is not a known field", "outcome"),
        ("rewards", [{"kind": "template", "image": "game_over.png"}], "rewards[0].reward is missing", "a number"),
        ("rewards.0.variable", "progress", "rewards[0].variable is 'progress'", "lives, moving, progress_x"),
        ("screen.progress.kind", "parallax", "screen.progress.kind is 'parallax'", '"scroll", "screen_change"'),
        ("screen.progress.region", [0, 0, 8, 8], "screen.progress.region is [0, 0, 8, 8]", ">= 16"),
        ("screen.progress.width", 4, "screen.progress.width is 4", "an integer >= 16"),
        ("screen.progress.min_response", 1.0, "screen.progress.min_response is 1.0", "[0, 1)"),
        ("screen.progress.max_shift_px", 0, "screen.progress.max_shift_px is 0", "a number > 0"),
        ("screen.progress.axis", "x", "screen.progress.axis is not a known field", "max_shift_px"),
        ("screen.moving.max_shift_px", 5, "screen.moving.max_shift_px is not a known field", "min_change"),
        ("screen.moving.min_change", -1, "screen.moving.min_change is -1", ">= 0"),
        ("screen.2fast", {"kind": "scroll"}, "screen.2fast is '2fast'", "letters, digits and _"),
        ("screen.lives", {"kind": "screen_change"}, "screen.lives is a table", "lives is variables.lives"),
        (
            "screen.progress_x",
            {"kind": "screen_change"},
            "screen.progress_x is a table",
            "progress_x is screen.progress",
        ),
        ("screen.progress_y", {"kind": "screen_change"}, "screen.progress_y is a table", "(progress_y) are not"),
    ],
)
def test_an_invalid_screen_field_or_template_is_named_with_what_was_expected(
    profile_folder: Path, dotted: str, value: Any, named: str, expected: str
) -> None:
    with pytest.raises(ProfileError) as raised:
        parse_profile(with_change(SCREEN_PROFILE, dotted, value), profile_folder / "bad.toml")
    message = str(raised.value)
    assert message.startswith("profile bad.toml: ")
    assert named in message and expected in message


def test_a_scroll_named_after_a_variable_prefix_clashes_when_its_variables_do(profile_folder: Path) -> None:
    """ "lives" the memory variable and a scroll "lives" (lives_x, lives_y) may live side by side, but a variable
    named lives_x may not."""
    data = with_change(SCREEN_PROFILE, "screen.lives", {"kind": "scroll"})
    assert parse_profile(data, profile_folder / "ok.toml").screen_variables[-2:] == ("lives_x", "lives_y")
    data = with_change(data, "variables.lives_x", {"address": 0x1004})
    with pytest.raises(ProfileError, match=r"screen.lives is a table; .*lives_x is variables.lives_x"):
        parse_profile(data, profile_folder / "bad.toml")


def test_a_template_image_is_found_relative_to_the_profile_file(profile_folder: Path, tmp_path: Path) -> None:
    (profile_folder / "profiles").mkdir()
    path = profile_folder / "profiles" / "mine.toml"
    path.write_text(
        '[game]\nname = "mine"\nbackend = "desktop"\n[window]\ntitle = "Mine"\n[actions]\nkeys = [[], ["Right"]]\n'
        '[[rewards]]\nkind = "template"\nimage = "../game_over.png"\nreward = -1.0\ndownscale = 2\n',
        encoding="utf-8",
    )
    profile = load_profile(path)
    reward = profile.rewards[0]
    assert isinstance(reward, TemplateReward) and reward.reward == -1.0
    assert reward.match.image == profile_folder / "game_over.png" and reward.match.pixels.shape == (15, 60)
    assert reward.match.region is None and reward.match.signal == "rewards[0]"


def test_the_screen_signals_example_in_the_docs_loads(profile_folder: Path) -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs" / "profiles.md").read_text(encoding="utf-8")
    section = docs.split("## Screen signals: an example", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    (profile_folder / "my_platformer_game_over.png").write_bytes((profile_folder / "game_over.png").read_bytes())
    path = profile_folder / "my_platformer.toml"
    path.write_text(example, encoding="utf-8")
    profile = load_profile(path)
    assert profile.screen_variables == ("progress_x", "progress_y", "picture")
    assert [term.kind for term in profile.rewards] == ["delta", "milestone"]
    assert [rule.kind for rule in profile.termination] == ["template", "stagnation", "time_cap"]
