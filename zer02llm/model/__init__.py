"""The model: pure PyTorch, configured by a plain ModelConfig dataclass."""

from zer02llm.model.masking import document_ids, document_positions
from zer02llm.model.transformer import IGNORE_INDEX, KVCache, Output, Transformer

__all__ = ["IGNORE_INDEX", "KVCache", "Output", "Transformer", "document_ids", "document_positions"]
