"""zer02llm's Optuna sweeper (conf/hydra/sweeper/optuna_tpe.yaml): hydra-optuna-sweeper's, saying what
happened when no trial completed (exit 1, the failed trials' logs named) instead of failing inside the
plugin at `study.best_trial` with a traceback.

Hydra instantiates a sweeper only when its class is registered under the `hydra_plugins` namespace and
importable by that name. Rather than ship a second top-level package (`hydra_plugins/...`) beside zer02llm,
the training entry point puts the class in a module of that name (sys.modules) and registers it
(Plugins.register) before Hydra starts.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import List

from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException

MODULE = "hydra_plugins.zer02llm_search"  # conf/hydra/sweeper/optuna_tpe.yaml: _target_: <MODULE>.OptunaSearch


class SearchFailed(CompactHydraException):
    """Hydra prints this message alone (no traceback) and exits with status 1."""


def register_optuna_search() -> None:
    """Register OptunaSearch with Hydra; a no-op without the `sweep` extra (nothing to extend)."""
    try:
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
    except ImportError:
        return

    class OptunaSearch(OptunaSweeper):
        def sweep(self, arguments: List[str]) -> None:
            try:
                return super().sweep(arguments)
            except ValueError:  # optuna's "Record does not exist." from study.best_trial
                from zer02llm.sweeps.search import no_best_trial, read_search

                sweep_dir = Path(str(self.sweeper.config.hydra.sweep.dir))
                search = read_search(sweep_dir)
                message = no_best_trial(search, sweep_dir) if search is not None else None
                if message is None:  # not the plugin's best-trial failure: as it was
                    raise
                raise SearchFailed(message) from None

    module = types.ModuleType(MODULE, "zer02llm's Optuna sweeper, registered by zer02llm.optuna_search")
    OptunaSearch.__module__, OptunaSearch.__qualname__ = MODULE, "OptunaSearch"  # the name Hydra locates
    module.OptunaSearch = OptunaSearch
    sys.modules[MODULE] = module
    Plugins.instance().register(OptunaSearch)
