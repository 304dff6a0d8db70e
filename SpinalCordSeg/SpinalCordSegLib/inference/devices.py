"""The device list of the panel: automatic, CUDA, MPS, CPU, each with the reason it cannot be used.

Example:
    >>> from SpinalCordSegLib.inference.devices import device_choices
    >>> [(c.name, c.enabled) for c in device_choices({"cuda": "no CUDA GPU", "mps": "not a Mac", "cpu": None})]
    [('auto', True), ('cuda', False), ('mps', False), ('cpu', True)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional

DEVICES = ("auto", "cuda", "mps", "cpu")
_DEVICE_LABELS = {"auto": "Automatic", "cuda": "CUDA GPU", "mps": "Apple MPS", "cpu": "CPU"}


@dataclass(frozen=True)
class DeviceChoice:
    """One entry of the device list; ``reason`` says why it is disabled."""

    name: str
    label: str
    enabled: bool
    reason: Optional[str]


def device_choices(reasons: Optional[Mapping[str, Optional[str]]]) -> List[DeviceChoice]:
    """The device list from ``engine.available_devices()`` (None: PyTorch is not installed).

    ``auto`` is labelled with the device it picks (CUDA, then MPS, then CPU,
    as the engine does).
    """
    if reasons is None:
        missing = "PyTorch is not installed yet (it is installed on the first Apply)"
        reasons = {"cuda": missing, "mps": missing, "cpu": None}
    picked = next((d for d in ("cuda", "mps", "cpu") if reasons.get(d) is None), "cpu")
    choices = [DeviceChoice("auto", f"{_DEVICE_LABELS['auto']} ({_DEVICE_LABELS[picked]})", True, None)]
    for name in DEVICES[1:]:
        reason = reasons.get(name, "unknown device")
        choices.append(DeviceChoice(name, _DEVICE_LABELS[name], reason is None, reason))
    return choices
