"""The env gateway: owns the game clock, asks inference replicas for actions, publishes transitions."""
