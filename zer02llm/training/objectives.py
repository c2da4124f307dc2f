"""Every mode's objective by name: the one place the Trainer learns which objective a run uses.

What an objective is: zer02llm/training/objective.py. Pretraining and SFT share next-token prediction
(next_token.py); DPO (dpo.py) brings pairs and a frozen reference; GRPO (grpo.py) rollouts and rewards.
"""

from __future__ import annotations

import torch

from zer02llm.config import Config
from zer02llm.tokenizer import Tokenizer
from zer02llm.training.dpo import DPO
from zer02llm.training.grpo import GRPO
from zer02llm.training.next_token import NextToken
from zer02llm.training.objective import Batch, Computed, Objective

__all__ = ["Batch", "Computed", "Objective", "build_objective"]

OBJECTIVES = {"pretrain": NextToken, "sft": NextToken, "dpo": DPO, "grpo": GRPO}


def build_objective(cfg: Config, tokenizer: Tokenizer, device: torch.device) -> Objective:
    """The objective of cfg.mode.name."""
    return OBJECTIVES[cfg.mode.name](cfg, tokenizer, device)
