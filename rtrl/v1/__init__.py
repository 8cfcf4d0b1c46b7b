"""Generated gRPC contracts for package rtrl.v1 (scripts/gen-protos writes this folder; do not edit)."""
