"""`python -m zer02llm.train [overrides]`: compose the config, validate it, train.

With generate.py and eval.py, the only place that knows about Hydra: it turns the composed
DictConfig into plain dataclasses and hands them to the Trainer.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zer02llm.cli import quote_text_overrides
from zer02llm.config import Config, ConfigError, register_configs, validate
from zer02llm.data.jsonl import DataError
from zer02llm.resources import shipped_path

log = logging.getLogger("zer02llm.train")
TEXT_KEYS = ("data.train_path", "data.val_path", "data.cache_dir", "tokenizer.path", "train.resume")
register_configs()


@hydra.main(version_base="1.3", config_path=str(shipped_path("conf")), config_name="config")
def main(dict_cfg: DictConfig) -> None:
    cfg: Config = OmegaConf.to_object(dict_cfg)
    try:
        validate(cfg)
        from zer02llm.trainer import Trainer  # torch is imported only once the config is known good

        resolved = OmegaConf.to_container(dict_cfg, resolve=True)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if launched_rank() in (None, 0):
            OmegaConf.save(resolved, run_dir / "config.yaml")  # Hydra's .hydra/config.yaml is unresolved
        Trainer(cfg, run_dir, resolved).fit()
    except (ConfigError, DataError) as e:
        # a clear message and exit status 2 instead of a traceback: nothing heavy has run yet
        log.error("%s", e)
        sys.exit(2)
    finally:
        if "torch" in sys.modules:
            from zer02llm import distributed

            distributed.shutdown()


def launched_rank() -> int | None:
    """The rank a launcher gave this process (torchrun, SLURM), without importing torch yet."""
    if "RANK" not in os.environ and "SLURM_PROCID" not in os.environ:
        return None
    from zer02llm.distributed import rank_from_env

    return rank_from_env()


def cli() -> None:
    """Console entry: file paths need no Hydra quoting (non-ASCII names, commas)."""
    sys.argv[1:] = quote_text_overrides(sys.argv[1:], TEXT_KEYS)
    if launched_rank() not in (None, 0):
        # under torchrun every rank runs this; only rank 0 may create the run directory and its
        # files (its timestamp would differ anyway): the Trainer takes rank 0's directory instead
        sys.argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    main()


if __name__ == "__main__":
    cli()
