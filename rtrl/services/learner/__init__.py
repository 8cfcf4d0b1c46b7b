"""The learner service: consumes transitions from the Redis stream, trains DQN continuously and publishes
versioned checkpoints. Entry points: `python -m rtrl.services.learner`, `settings.LearnerSettings.from_env`,
`server.serve`."""
