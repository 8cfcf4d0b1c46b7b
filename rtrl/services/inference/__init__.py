"""Inference replica: answers the env gateway's Act calls with the newest checkpoint the learner published."""
