"""The learning algorithms RTRL_ALGORITHM chooses from: one flat file each, behind the interface in base.py.

This registry is the one list of them: the learner's settings read each algorithm's hyperparameters
(RTRL_<NAME>_<FIELD>), the loop builds the chosen one, and inference serves a fresh policy of its head
before the first checkpoint. Adding an algorithm is a file in this folder plus its class in `ALGORITHMS`.
"""

from __future__ import annotations

from services.learner.algorithms import dqn, ppo, vtrace
from services.learner.algorithms.base import Algorithm

ALGORITHMS: dict[str, type[Algorithm]] = {algorithm.name: algorithm for algorithm in (dqn.DQN, vtrace.VTrace, ppo.PPO)}
DEFAULT_ALGORITHM = "dqn"
