"""A network's training state as flat tensors for checkpoints (safetensors): its weights and its optimizer's
per-parameter state, keyed by parameter name.

Optimizer keys are `<prefix><parameter name>.<state key>` (`adam.torso.1.weight.exp_avg`), not the
optimizer's positional ids, so a resumed learner maps the state back even if parameter order changed.
Every algorithm's `learner_state` and `load_state` go through these functions.
"""

from __future__ import annotations

import torch
from torch import nn


def export_optimizer_state(
    optimizer: torch.optim.Optimizer, network: nn.Module, prefix: str, keys: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """`keys` of each parameter's state (`step` as a scalar tensor); parameters never stepped have none."""
    tensors: dict[str, torch.Tensor] = {}
    for name, parameter in network.named_parameters():
        state = optimizer.state.get(parameter, {})
        for key in keys:
            if key in state:
                value = state[key]
                tensors[f"{prefix}{name}.{key}"] = (
                    value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
                )
    return tensors


def import_optimizer_state(
    optimizer: torch.optim.Optimizer,
    network: nn.Module,
    tensors: dict[str, torch.Tensor],
    prefix: str,
    keys: tuple[str, ...],
) -> None:
    """Replaces the optimizer's state with what `export_optimizer_state` gave (tensors without `prefix` are
    ignored). Raises ValueError for state of unknown parameters, incomplete state, or a shape that differs."""
    optimizer.state.clear()
    parameters = dict(network.named_parameters())
    known = {f"{prefix}{name}.{key}" for name in parameters for key in keys}
    unknown = sorted(k for k in tensors if k.startswith(prefix) and k not in known)
    if unknown:
        raise ValueError(f"checkpoint has optimizer state for unknown parameters: {', '.join(unknown[:5])}")
    for name, parameter in parameters.items():
        full = {key: f"{prefix}{name}.{key}" for key in keys}
        present = [key for key, full_key in full.items() if full_key in tensors]
        if not present:
            continue  # parameter never stepped
        if len(present) != len(keys):
            raise ValueError(f"checkpoint has incomplete optimizer state for {name}: only {', '.join(present)}")
        state: dict[str, torch.Tensor] = {}
        for key, full_key in full.items():
            value = tensors[full_key]
            if key == "step":
                # torch keeps `step` as a CPU float tensor unless the optimizer is capturable; match that.
                state[key] = value.detach().to("cpu", torch.float32).clone()
                continue
            if value.shape != parameter.shape:
                raise ValueError(
                    f"checkpoint optimizer state for {name} has shape {list(value.shape)}, "
                    f"the parameter has {list(parameter.shape)}"
                )
            state[key] = value.detach().to(parameter.device, parameter.dtype).clone()
        optimizer.state[parameter] = state


def restore(
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    learner_state: dict[str, torch.Tensor] | None,
    *,
    prefix: str,
    keys: tuple[str, ...],
    owner: str,
    other_prefixes: tuple[str, ...] = (),
) -> None:
    """Loads `weights` into `network` and, when given, the optimizer's state from `learner_state` (else the
    optimizer starts fresh). `learner_state` may hold only tensors under `prefix` or `other_prefixes` (which
    the caller loads). Raises ValueError, naming `owner`, for anything that does not fit."""
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:  # load_state_dict reports missing/unexpected keys and shape mismatches this way
        raise ValueError(f"checkpoint tensors do not fit the network: {e}") from e
    optimizer.state.clear()
    if learner_state is None:
        return
    unknown = sorted(k for k in learner_state if not k.startswith((prefix, *other_prefixes)))
    if unknown:
        raise ValueError(f"checkpoint has learner state {owner} does not know: {', '.join(unknown[:5])}")
    import_optimizer_state(optimizer, network, learner_state, prefix, keys)
