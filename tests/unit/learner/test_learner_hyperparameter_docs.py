"""Every hyperparameter of every algorithm is documented where the algorithm defines it (a docstring under each
field, whose first sentence docs/settings.md shows), and the learner's README points at those sections."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rtrl.services.learner.algorithms import ALGORITHMS
from rtrl.services.learner.settings import field_docstrings

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "rtrl" / "services" / "learner" / "README.md"


def test_every_field_of_every_algorithm_has_a_docstring() -> None:
    for name, algorithm in ALGORITHMS.items():
        documented = set(field_docstrings(algorithm.config_class))
        assert documented == {f.name for f in dataclasses.fields(algorithm.config_class)}, name


def test_the_learner_readme_links_every_algorithms_hyperparameters() -> None:
    readme = README.read_text()
    settings_md = (ROOT / "docs" / "settings.md").read_text()
    for name in ALGORITHMS:
        assert f"### Hyperparameters of {name}\n" in settings_md, name
        assert f"(../../../docs/settings.md#hyperparameters-of-{name})" in readme, f"{README} should link {name}'s"
