"""Choosing the device a command runs on, and the precision it computes in."""

from __future__ import annotations

import contextlib
import warnings

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


#: The precisions ``train.precision`` and ``--precision`` take.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")

#: The source of a precision given on the command line.
PRECISION_FLAG = "--precision"

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

def _cpu_has(feature: str) -> bool:
    check = getattr(torch.cpu, f"_is_{feature}_supported", None)
    try:
        return bool(check()) if callable(check) else False
    except RuntimeError:
        return False


def bf16_hint(precision: str, device: torch.device) -> str | None:
    """A one-line tip for an fp32 run on a CPU with AMX, where bf16 inference is several times faster.

    AMX runs NHWC bf16 convolutions several times faster than fp32 ones (a ResNet-50
    Faster R-CNN 3.3x on 2 Xeon cores); the detections move by rounding only.
    """
    if precision != "fp32" or device.type != "cpu" or not _cpu_has("amx_tile"):
        return None
    return (
        "tip: this CPU has AMX: --precision bf16 --channels-last runs convolutions several times faster "
        "(boxes and scores move by rounding; compare once with detkit eval --precision bf16)"
    )


def check_precision_name(precision: str, *, source: str = "train.precision") -> str:
    """``precision`` when it is one of :data:`PRECISIONS`, before the device is known.

    Commands call it before reading any file, then :func:`check_precision` once the
    device is resolved.

    Raises:
        ConfigError: an unknown precision, naming ``source``.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"{source} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def check_precision(precision: str, device: torch.device, *, source: str = "train.precision") -> str:
    """Validate ``precision`` for ``device``; warn where it runs slower than fp32.

    On a CPU, bf16 is fast only with AMX tiles (and fp16 with AMX-FP16); elsewhere
    the autocast casts cost more than they save, so a warning says so. On CUDA,
    bf16 needs a GPU that supports it (Ampere or newer).

    Raises:
        ConfigError: an unknown precision, or bf16 on a GPU without it, naming ``source``.
    """
    check_precision_name(precision, source=source)
    if precision == "fp32":
        return precision
    if device.type == "cpu":
        fast = _cpu_has("amx_tile") if precision == "bf16" else _cpu_has("amx_fp16")
        if not fast:
            partly = precision == "bf16" and _cpu_has("avx512_bf16")
            warnings.warn(
                f"{source}={precision} on a CPU without AMX{'-FP16' if precision == 'fp16' else ''}: "
                + ("large convolutions gain from AVX512-BF16, but training usually runs slower than fp32"
                   if partly else "it runs, but slower than fp32"),
                stacklevel=2,
            )
    elif device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{source}=bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """Mixed precision on ``device``: :func:`torch.autocast` for fp16/bf16, nothing for fp32.

    Operations that need the range of fp32 (losses, box decoding, NMS) are kept in
    fp32 by autocast's own lists and by detkit's ops, which upcast boxes.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


__all__ = [
    "DEVICE_FLAG",
    "PRECISIONS",
    "PRECISION_FLAG",
    "autocast",
    "check_precision",
    "check_precision_name",
    "command_device",
    "resolve_device",
]
