"""Game profiles with random values at random places: every shipped profile, and a profile with screen
signals and template rules, one field at a time set to a value of any type (or removed, or an unknown
field added), either still parses or fails with a ProfileError naming the profile; never another
exception (a TypeError or KeyError would mean a field that was not checked).

The hand-written table in tests/unit/env_gateway/test_gateway_profiles.py checks the wording for each
field; this searches for the fields and value types nobody listed.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtrl.services.env_gateway.profiles import SHIPPED_DIR, ProfileError, parse_profile

SHIPPED = {path.stem: tomllib.loads(path.read_text(encoding="utf-8")) for path in sorted(SHIPPED_DIR.glob("*.toml"))}
# No shipped profile reads the screen (yet): this one covers [screen.<name>] and the template kinds.
SCREEN = tomllib.loads(
    """
[game]
name = "screen"
backend = "desktop"
[window]
title = "Game"
[actions]
keys = [[], ["Right"], ["Left"]]
[screen.progress]
kind = "scroll"
region = [0, 40, 320, 200]
width = 64
min_response = 0.2
max_shift_px = 48
[screen.moving]
kind = "screen_change"
width = 80
min_change = 0.5
[[rewards]]
kind = "milestone"
variable = "progress_x"
every_px = 100
[[rewards]]
kind = "template"
image = "banner.png"
region = [0, 0, 200, 100]
threshold = 0.9
downscale = 2
reward = -1.0
[[termination]]
kind = "template"
image = "banner.png"
outcome = "truncated"
[[termination]]
kind = "stagnation"
variable = "moving"
epsilon_px = 10
window_s = 5
"""
)

ANY_VALUE = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a parsed TOML document where a value sits."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths(child, (*prefix, index))
    return found


@st.composite
def mutated_profile(draw: st.DrawFn, profiles: dict[str, dict[str, Any]] = SHIPPED) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(profiles)))
    data = copy.deepcopy(profiles[name])
    *parents, last = draw(st.sampled_from(paths(data)))
    node: Any = data
    for part in parents:
        node = node[part]
    action = draw(st.sampled_from(["set", "remove", "add unknown"]))
    if action == "set":
        node[last] = draw(ANY_VALUE)
    elif action == "remove":
        del node[last]
    elif isinstance(node, dict):
        node[draw(st.text(min_size=1, max_size=8))] = draw(ANY_VALUE)
    return name, data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated_profile())
def test_a_profile_with_any_value_anywhere_parses_or_names_what_is_wrong(case, resilience_ledger) -> None:
    name, data = case
    resilience_ledger.inputs["game profiles (mutated shipped profiles)"] += 1
    try:
        parse_profile(data, Path(f"/fuzz/{name}.toml"))
    except ProfileError as error:
        assert str(error).startswith(f"profile {name}.toml: "), error


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz_screen")
    banner = np.zeros((30, 120, 3), np.uint8)
    cv2.putText(banner, "GAME OVER", (4, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (40, 40, 230), 2)
    cv2.imwrite(str(folder / "banner.png"), banner)
    parse_profile(SCREEN, folder / "screen.toml")  # unchanged, it is valid: the mutations are what fails
    return folder


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated_profile(profiles={"screen": SCREEN}))
def test_a_screen_profile_with_any_value_anywhere_parses_or_names_what_is_wrong(
    case, image_folder, resilience_ledger
) -> None:
    _, data = case
    resilience_ledger.inputs["game profiles (a mutated screen profile)"] += 1
    try:
        parse_profile(data, image_folder / "screen.toml")
    except ProfileError as error:
        assert str(error).startswith("profile screen.toml: "), error
