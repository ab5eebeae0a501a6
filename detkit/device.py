"""Choosing the device a command runs on."""

from __future__ import annotations

import torch

from detkit.errors import ConfigError

#: The source of a device given on the command line.
DEVICE_FLAG = "--device"


def _fix(source: str) -> str:
    """How to ask for the CPU where the device came from: ``--device cpu`` or ``KEY=cpu``."""
    if source.startswith("-"):
        return f"{source} cpu"
    key = source.split()[0]
    return f"{key}=cpu" if source == key else f"{DEVICE_FLAG} cpu"


def resolve_device(name: str, *, source: str = "train.device") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (any name :class:`torch.device` takes).
        source: where ``name`` came from, named in the error: ``"--device"`` (the
            flag), a config key (``"train.device"``), or a key of a file
            (``"train.device of checkpoint 'best.pt'"``; the fix offered is then
            ``--device cpu``).

    Raises:
        ConfigError: an unknown device, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"{source}: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{source} is {name!r} but no CUDA device is available; use {_fix(source)}")
    return device


def command_device(flag: str | None, configured: str, *, source: str = "train.device") -> torch.device:
    """The device of a command: its ``--device`` flag when given, else ``configured`` (from ``source``).

    Commands call it before any work, so a bad device fails first and the error
    names where the device came from.
    """
    if flag:
        return resolve_device(flag, source=DEVICE_FLAG)
    return resolve_device(str(configured), source=source)


__all__ = ["DEVICE_FLAG", "command_device", "resolve_device"]
