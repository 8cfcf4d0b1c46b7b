"""The rtrl services: env gateway, inference replicas and learner, each a package run with `python -m`."""
