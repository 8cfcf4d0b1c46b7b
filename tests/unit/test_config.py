"""Settings parsing: defaults, valid values, and errors that name the variable to fix."""

import pytest

from rtrl.config import SettingsError, env_bool, env_choice, env_float, env_int, env_list


def test_defaults_apply_when_unset_or_blank():
    assert env_int({}, "PORT", 5) == 5
    assert env_int({"RTRL_PORT": "  "}, "PORT", 5) == 5


def test_values_are_parsed():
    env = {"RTRL_N": "7", "RTRL_X": "0.5", "RTRL_B": "yes", "RTRL_C": "NOOP", "RTRL_L": "a, b,,c"}
    assert env_int(env, "N", 1) == 7
    assert env_float(env, "X", 1.0) == 0.5
    assert env_bool(env, "B", False) is True
    assert env_choice(env, "C", "random", ("noop", "random")) == "noop"
    assert env_list(env, "L", ()) == ("a", "b", "c")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: env_int({"RTRL_PORT": "http"}, "PORT", 1),
            "RTRL_PORT='http' is not valid; set it to an integer",
        ),
        (lambda: env_int({"RTRL_N": "0"}, "N", 1, minimum=1), "RTRL_N=0 is too small; set it to 1 or more"),
        (lambda: env_float({"RTRL_X": "fast"}, "X", 1.0), "set it to a number"),
        (lambda: env_float({"RTRL_X": "nan"}, "X", 1.0, minimum=0.0), "RTRL_X='nan' is not valid; set it to a number"),
        (lambda: env_bool({"RTRL_B": "maybe"}, "B", True), "set it to true or false"),
        (lambda: env_choice({"RTRL_C": "x"}, "C", "a", ("a", "b")), "set it to one of: a, b"),
    ],
)
def test_invalid_values_name_the_variable(call, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
