"""The one place that reads the launcher's environment and sets up torch.distributed.

torchrun exports RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; a SLURM job started
through submitit has SLURM_* variables instead, which submitit's TorchDistributedEnvironment turns
into the same five. A plain `python -m zer02llm.train` has neither and runs as rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def read_env() -> DistEnv:
    """This process's place in the job, from torchrun's variables or SLURM's (through submitit)."""
    # a job step with several tasks (srun, or submitit's tasks_per_node > 1); SLURM_NTASKS alone also
    # describes an allocation in which one process may be run by hand, which must not wait for others
    if "RANK" not in os.environ and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and _in_submitit_job():
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if "RANK" not in os.environ:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))


def _in_submitit_job() -> bool:
    try:
        import submitit

        submitit.JobEnvironment()
        return True
    except (ImportError, RuntimeError):
        return False


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """Each rank its own GPU (cuda:LOCAL_RANK); CPU ranks share the CPU."""
    if device.type == "cuda" and env.enabled:
        return torch.device("cuda", env.local_rank)
    return device


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPUs."""
    if not env.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, **kwargs)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """rank src's value on every rank (unchanged without a process group)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank_from_env() -> Optional[int]:
    """The rank a launcher assigned, read before anything is initialised (for the entry point)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return None
