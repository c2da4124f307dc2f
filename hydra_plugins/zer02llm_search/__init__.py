"""zer02llm's Optuna sweeper (conf/hydra/sweeper/optuna_tpe.yaml): hydra-optuna-sweeper's, saying what
happened when no trial completed (exit 1, the failed trials' logs named) instead of failing inside the
plugin at `study.best_trial` with a traceback.

Hydra instantiates sweepers only from the hydra_plugins namespace, and imports every module in it when
it starts: this one stays cheap (optuna is imported only once a search has no best trial).
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from hydra.errors import CompactHydraException

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the `sweep` extra is not installed: nothing to extend
    OptunaSweeper = None


class SearchFailed(CompactHydraException):
    """Hydra prints this message alone (no traceback) and exits with status 1."""


if OptunaSweeper is not None:

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
