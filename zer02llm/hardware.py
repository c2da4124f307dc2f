"""The device, compute dtype and CPU threads a hardware preset asks for."""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from zer02llm.config import ConfigError, HardwareConfig, device_problems

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(hardware: HardwareConfig) -> tuple[torch.device, torch.dtype]:
    """The device and compute dtype a hardware preset asks for, or a plain error if it can't be had."""
    name = hardware.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if problems := device_problems(hardware):  # validate() lists it with the rest; this is the last guard
        raise ConfigError(problems[0])
    device = torch.device(name)
    dtype_name = hardware.dtype
    if dtype_name == "auto":
        if device.type == "cuda":
            dtype_name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype_name = "float32"
    if device.type == "cpu" and dtype_name == "float16":
        raise ConfigError("hardware.dtype=float16 is for GPUs; use float32 or bfloat16 on the CPU")
    return device, DTYPES[dtype_name]


def set_threads(threads: Optional[int], key: str = "hardware.threads") -> None:
    """threads > 0 sets torch's intra-op CPU threads; null/0 keeps torch's default (one per core).
    `key`: the setting it came from, for the messages."""
    if not threads:
        return
    torch.set_num_threads(threads)
    cores = os.cpu_count() or 1
    if threads > cores:  # more threads than cores: they preempt each other at every op
        log.warning("%s=%d exceeds this machine's %d CPU cores: expect slower steps; use %s=%d or fewer",
                    key, threads, cores, key, cores)
    log.info("torch CPU threads: %d (%s; %d cores)", torch.get_num_threads(), key, cores)
