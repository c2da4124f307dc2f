"""The device, compute dtype and CPU threads a hardware preset asks for."""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from zer02llm.config import ConfigError, HardwareConfig, device_problems

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# dense (no sparsity) bf16 tensor-core peaks, TFLOP/s; the first key found in the device name wins
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0), ("RTX 3090", 71.0), ("RTX 4090", 165.0)]
MFU_FORMULA = "MFU = tokens/s * flops_per_token / (peak FLOP/s * devices)"


def peak_tflops(device_name: Optional[str]) -> Optional[tuple[str, float]]:
    """(the table's key, its dense bf16 peak TFLOP/s) of a GPU by name; None for a CPU or a GPU not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if device_name and key in device_name:
            return key, tflops
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops_per_device: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: the training FLOPs done per second over what the devices could do at peak."""
    return tokens_per_s * flops_per_token / (peak_tflops_per_device * 1e12 * devices)


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
