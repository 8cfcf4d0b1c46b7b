"""The dashboard: a web page showing running gateways, replicas and the learner live (README.md here)."""
