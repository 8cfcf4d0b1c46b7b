"""rtrl: reinforcement learning on games that never pause.

The shared library of the three services: the generated contracts (rtrl.v1), the transition codec,
checkpoint publication, the policy networks, settings parsing and gRPC plumbing.
"""

__version__ = "0.1.0"
