"""The learner's README lists every hyperparameter of every algorithm with its default and meaning, as the
algorithm files define them: a new field, a changed default or a new algorithm fails here until the table
says so (the failure shows the table to paste)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rtrl.services.learner.algorithms import ALGORITHMS
from rtrl.services.learner.settings import field_docstrings, first_sentence

README = Path(__file__).resolve().parents[3] / "rtrl" / "services" / "learner" / "README.md"
BEGIN = "<!-- hyperparameters: begin -->"
END = "<!-- hyperparameters: end -->"


def expected_section() -> str:
    parts = [BEGIN]
    for name, algorithm in ALGORITHMS.items():
        config_class = algorithm.config_class
        docs = field_docstrings(config_class)
        parts += [
            "",
            f"`{name}` ({config_class.__name__} in `algorithms/{name}.py`):",
            "",
            "| Variable | Default | Meaning |",
            "|---|---|---|",
        ]
        for field in dataclasses.fields(config_class):
            default = field.default
            shown = (
                str(default).lower()
                if isinstance(default, bool)
                else f"{default:g}"
                if isinstance(default, float)
                else str(default)
            )
            meaning = first_sentence(docs[field.name]).replace("|", "\\|")
            parts.append(f"| `RTRL_{name.upper()}_{field.name.upper()}` | {shown} | {meaning} |")
    parts += ["", END]
    return "\n".join(parts)


def test_every_field_of_every_algorithm_has_a_docstring() -> None:
    for name, algorithm in ALGORITHMS.items():
        documented = set(field_docstrings(algorithm.config_class))
        assert documented == {f.name for f in dataclasses.fields(algorithm.config_class)}, name


def test_the_learner_readme_lists_every_hyperparameter_with_its_default() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text, f"{README} needs the markers {BEGIN} and {END}"
    section = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert section == expected_section(), f"replace the section of {README} by:\n\n{expected_section()}"
