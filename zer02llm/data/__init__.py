"""Data: JSONL reading, tokenized caches, datasets and samplers."""
