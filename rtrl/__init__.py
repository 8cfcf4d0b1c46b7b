"""rtrl: reinforcement learning on games that never pause.

The shared library of the three services: the generated contracts (rtrl.v1), the transition codec,
checkpoint publication, the policy networks, settings parsing and gRPC plumbing.
"""

import os

# Before anything imports gRPC. Its fork support restarts gRPC's poller threads in a child between fork
# and exec, where subprocess then closes their epoll descriptor: one child in a few dozen died before it
# could exec (grpc/grpc#43055; tests/faults/test_fault_fork_with_grpc.py), and `rtrl up` lost a restart
# now and then. rtrl forks only to exec (services, Redis, recordings), and so needs none of it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"
