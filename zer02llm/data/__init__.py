"""Data: input sources (JSONL, gzip, zstd, Parquet), tokenized caches, datasets, mixtures and samplers.

The trainer's entry points are in zer02llm.data.inputs: pretrain_data, sft_data and cached_files.
"""
