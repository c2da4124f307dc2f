"""Next-token prediction: the objective of pretraining and SFT, which differ only in their data."""

from __future__ import annotations

from typing import Callable

import torch

from zer02llm.config import Config
from zer02llm.data.inputs import pretrain_data, sft_data
from zer02llm.model import IGNORE_INDEX, Output, document_ids
from zer02llm.tokenizer import Tokenizer
from zer02llm.training.objective import Autocast, Batch, Computed, Dataset, Objective
from zer02llm.training.validation import evaluate


class NextToken(Objective):
    """Next-token prediction: pretraining (packed {"text"} documents) and SFT (the assistant's tokens)."""

    def __init__(self, cfg: Config, tokenizer: Tokenizer, device: torch.device):
        super().__init__(cfg, tokenizer)
        self.fine_tunes = cfg.mode.name == "sft"
        self.byte_lengths = torch.tensor(tokenizer.byte_lengths(), device=device)  # for val_bpb

    def datasets(self) -> tuple[Dataset, dict[str, Dataset]]:
        build = sft_data if self.cfg.mode.name == "sft" else pretrain_data  # any input form, mixtures too
        return build(self.cfg.data, self.tokenizer, self.cfg.train.seed)

    def forward_kwargs(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra model arguments for a batch: the documents of packed windows, with data.document_mask."""
        if not self.cfg.data.document_mask:
            return {}
        return {"doc_ids": document_ids(inputs, self.tokenizer.bos_id)}

    def counts(self, batch: Batch) -> tuple[int, int]:
        targets = int((batch[1] != IGNORE_INDEX).sum())
        return targets, targets

    def compute(self, forward: Callable[..., Output], batch: Batch) -> Computed:
        inputs, targets = batch
        out = forward(inputs, targets, **self.forward_kwargs(inputs))
        return Computed(out.loss, out)

    def evaluate(self, model: torch.nn.Module, dataset: Dataset, device: torch.device, rank: int, world_size: int,
                 autocast: Autocast) -> dict[str, float]:
        train = self.cfg.train
        return evaluate(model, dataset, train.batch_size, train.eval_batches, self.byte_lengths, device, rank,
                        world_size, autocast, self.forward_kwargs)
