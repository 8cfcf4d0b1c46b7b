"""The learning algorithms RTRL_ALGORITHM chooses from: one flat file each, behind the interface in base.py.

This registry is the list of them: the learner's settings read each algorithm's hyperparameters
(RTRL_<NAME>_<FIELD>), the loop builds the chosen one, and inference serves a fresh policy of its head
before the first checkpoint. Adding an algorithm is a file in this folder plus its class in `ALGORITHMS`.
"""

from __future__ import annotations

from rtrl.services.learner.algorithms import dqn, ppo, vtrace
from rtrl.services.learner.algorithms.base import Algorithm
from rtrl.services.learner.settings import DEFAULT_ALGORITHM

# rtrl/services/learner/settings.py's ALGORITHM_NAMES lists the same names, for the settings tables that load
# without torch (tests/unit/learner/test_learner_settings.py keeps them equal).
ALGORITHMS: dict[str, type[Algorithm]] = {algorithm.name: algorithm for algorithm in (dqn.DQN, vtrace.VTrace, ppo.PPO)}
__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "Algorithm"]
