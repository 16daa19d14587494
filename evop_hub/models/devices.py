"""Where a model is loaded and in what precision: ``--dtype``, ``--device-map``, ``--max-memory``, and the one
check that a named device exists here (loading, a search's device pool and ``compare`` all use it)."""

from __future__ import annotations

import json
from typing import Any

import torch

from ..errors import EvopError

DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
NO_DEVICE_FIX = "use cpu, or install a torch built for it"


def torch_dtype(value: str) -> Any:
    """``--dtype`` as ``from_pretrained`` takes it, or one line naming the accepted ones."""
    if value not in DTYPES:
        raise EvopError(f"unknown --dtype {value!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[value]


def dtype_name(model: torch.nn.Module) -> str:
    """The weights' dtype as `--dtype` spells it (bfloat16, float32)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """Accept JSON (``{"0": "20GiB", "cpu": "60GiB"}``) or ``0=20GiB,cpu=60GiB``; GPU ids become ints."""
    if not text:
        return None
    try:
        raw = (
            json.loads(text)
            if text.lstrip().startswith("{")
            else dict(item.split("=", 1) for item in text.split(",") if item.strip())
        )
    except (ValueError, json.JSONDecodeError) as exc:
        raise EvopError(f"cannot parse --max-memory {text!r}; use 0=20GiB,cpu=60GiB or a JSON object") from exc
    return {(int(k) if str(k).strip().isdigit() else str(k).strip()): str(v).strip() for k, v in raw.items()}


def check_device(name: str, fix: str = NO_DEVICE_FIX) -> torch.device:
    """A device this torch has, or one line saying what is here instead: torch's own error is an assertion
    deep inside the first copy of weights. ``fix`` is the advice when the device type is missing altogether
    (a config file's own setting, say)."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EvopError(f"device {name!r} is not a torch device; use cpu, cuda, cuda:1, ...") from exc
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None
    if backend is not None and not backend.is_available():
        kind = "CUDA GPU" if device.type == "cuda" else f"{device.type} device"
        raise EvopError(f"{name}: no {kind} is visible here (torch {torch.__version__}); {fix}")
    if backend is not None and device.index is not None and hasattr(backend, "device_count"):
        if device.index >= backend.device_count():
            raise EvopError(
                f"{name}: there are {backend.device_count()} {device.type} devices here "
                f"({device.type}:0 to {device.type}:{backend.device_count() - 1})"
            )
    return device


def device_map(value: str | dict | None) -> str | dict | None:
    """``--device-map`` as ``from_pretrained`` takes it: a strategy, one device, or a JSON map whose devices
    are all here."""
    if value is None or isinstance(value, dict):
        return value
    if value.lstrip().startswith("{"):
        try:
            return _check_map_devices(json.loads(value))
        except json.JSONDecodeError as exc:
            raise EvopError(
                f"--device-map is not valid JSON ({exc.msg}); give a strategy, a device or a JSON map"
            ) from exc
    if value in DEVICE_MAP_STRATEGIES or value == "disk":
        return value
    if value in ("cpu", "mps") or value.startswith(("cuda", "xpu", "npu")):
        check_device(value)
        return value
    raise EvopError(
        f"unknown --device-map {value!r}; use {', '.join(DEVICE_MAP_STRATEGIES)}, a device such as cpu or cuda:0, "
        "or a JSON map of module names to devices"
    )


def _check_map_devices(mapping: Any) -> dict:
    """Every device a JSON --device-map names must be here (an integer is a GPU's index): a missing one would
    fail as an assertion deep inside the first copy of weights."""
    if not isinstance(mapping, dict):
        raise EvopError('--device-map JSON must be an object of module names to devices, e.g. {"": "cpu"}')
    for device in mapping.values():
        if device != "disk":
            check_device(f"cuda:{device}" if isinstance(device, int) else str(device))
    return mapping


def accelerator_present() -> bool:
    """Whether this torch sees a GPU (CUDA or ROCm, XPU) to load a model onto."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def placement(model: torch.nn.Module) -> str:
    """Where a loaded model went, in one line: its devices, dtype and the memory its weights take."""
    mapping = getattr(model, "hf_device_map", None)
    devices = sorted({str(d) for d in mapping.values()}) if mapping else [str(next(model.parameters()).device)]
    size = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")
    return f"on {', '.join(devices)} ({dtype_name(model)}, {size / (1 << 30):.2f} GiB of weights)"
