#!/usr/bin/env python3
"""Learning benchmark: how fast each training recipe (optimizer x packing) lowers the validation loss,
per optimizer step and per second, on the same data, model and token budget. It prints figures; it
asserts none.

Recipes: each optimizer of conf/optim/ (adamw, muon) with each packing: `concat` (data.packing=concat),
`docmask` (concat + data.document_mask=true) and `bos_aligned` (data.packing=bos_aligned). Every run is
`python -m zer02llm.train` (the cpu preset unless --override says otherwise) in a subprocess, one at a
time, with the same seed, steps and batch: the same tokens per step.

Learning rates, each run with the whole --steps budget; the lowest final validation loss wins:
- adamw: train.lr at every --lr-sweep multiple of its default.
- muon has a peak lr per parameter group (docs/optimizers.md); two are swept, the others stay at the
  config's values: optim.matrix_lr (the hidden matrices, Muon) at every --lr-sweep multiple of its
  default, then optim.embedding_lr (the token embedding, tied to the LM head in the presets) at every
  --second-lr-sweep multiple of its default, at the best optim.matrix_lr.
- Along each, a winner at the end of the values tried gets up to --extend-edges more values beyond it
  (the same ratio). Every run is reported; a best still at an end is marked (edge).

Validation is the same for every recipe: all concat windows of the validation file, evaluated here on
checkpoints the runs save every --eval-interval steps (the final one of every run, every one of each
recipe's best run). The trainer's own validation set follows data.packing, so a bos_aligned run's holds
other windows: the trainer evaluates those runs' final step too, reported apart as own-layout val loss.
A recipe trained with data.document_mask=true is evaluated with its document mask, as the trainer does.

    val loss        mean next-token loss (nats) over every target of the windows
    val bpb         bits per UTF-8 byte of the text targets (zer02llm/training/validation.py)
    first-8 / rest  mean loss on the targets at document positions 1..8 (after a bos in the same window:
                    zer02llm.data.packing.first_positions_mask) / on every other target
    steps to base   the step at which the recipe's val loss first falls to the final val loss of the
                    baseline (adamw-concat at its best lr), linear between evaluations ("<= 50": already
                    at the first), and its multiple of the baseline's own steps; "not reached" within
                    --steps. Each run follows its own cosine schedule over --steps, so this is "steps of a
                    --steps run", not the length of a shorter run. The same against adamw with the same
                    packing ("steps to adamw, same packing")
    train s         training wall time: each logged window's tokens / its tokens_per_s (metrics.jsonl),
                    summed; evaluation, startup and tokenization excluded

    python scripts/bench_learning.py                        # shared en+zh corpora, all 6 recipes
    python scripts/bench_learning.py --recipes adamw-concat,muon-concat --lr-sweep 1 --train-lr-sweep ""
    python scripts/bench_learning.py --reuse outputs/bench_learning/<earlier> --extend-edges 3   # widen sweeps
    python scripts/bench_learning.py --train a.jsonl b.jsonl --val v.jsonl --steps 800
    python scripts/bench_learning.py --smoke                # tiny model on the shipped sample corpus, ~30 s

Writes results.json, results.md and curves.png into --out, each run's directory under runs/ (train.log,
metrics.jsonl, summary.json; checkpoints removed once evaluated, unless --keep-checkpoints). Several
training files are concatenated into one temporary JSONL (data.train_path takes one file), as are several
validation files; they and the token cache live in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

try:
    import zer02llm  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zer02llm.checkpoint import list_checkpoints, read_checkpoint_config
from zer02llm.data.packing import first_positions_mask, pretrain_dataset
from zer02llm.data.pretrain import PackedDataset, tokenize_to_cache
from zer02llm.training.validation import metrics_from_sums, token_losses
from zer02llm.inference.loading import load_for_inference
from zer02llm.model import IGNORE_INDEX, document_ids
from zer02llm.resources import REPO_DIR, sample_data_path, shipped_path
from zer02llm.tokenizer import Tokenizer

SHARED_DATA = REPO_DIR.parent / "shared" / "data"
DEFAULT_TRAIN = [SHARED_DATA / "pretrain_en.jsonl", SHARED_DATA / "pretrain_zh.jsonl"]
DEFAULT_VAL = [SHARED_DATA / "val_en.jsonl", SHARED_DATA / "val_zh.jsonl"]
FIRST_POSITIONS = 8  # the "first 8 tokens vs the rest"
EVAL_BATCH = 8  # sequences per evaluation forward (the cpu preset's batch; larger is slower on 2 cores)
PACKINGS = {  # name -> overrides
    "concat": ["data.packing=concat"],
    "docmask": ["data.packing=concat", "data.document_mask=true"],
    "bos_aligned": ["data.packing=bos_aligned"],
}
PACKING_LABELS = {"concat": "concat", "docmask": "document-masked", "bos_aligned": "bos-aligned"}
# an optimizer's lr keys: the first swept at every --lr-sweep multiple, the second (if any) after it at every
# --second-lr-sweep multiple; optimizers not listed have train.lr alone
LR_KEYS = {"muon": ("optim.matrix_lr", "optim.embedding_lr")}
BASELINE = "adamw-concat"
DEFAULTS = dict(steps=400, eval_interval=50, lr_sweep="0.5,1,2", second_lr_sweep="0.5,2", recipes=None,
                extend_edges=1)
SMOKE = dict(steps=20, eval_interval=10, lr_sweep="1,2", second_lr_sweep="2", recipes="adamw-concat,muon-bos_aligned",
             extend_edges=0)
SMOKE_OVERRIDES = ["model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "data.seq_len=32",
                   "train.batch_size=4", "train.warmup_steps=2"]
# the settings runs must share to be taken from an earlier results.json (--reuse)
REUSE_SETTINGS = ("steps", "eval_interval", "overrides", "train_name", "val_name", "seq_len", "batch_size",
                  "grad_accum", "seed", "val_windows")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    add = p.add_argument
    add("--train", nargs="+", type=Path, default=None,
        help=f"training JSONL file(s), concatenated; unset: {' + '.join(str(x) for x in DEFAULT_TRAIN)} "
             f"(--smoke: the shipped sample corpus)")
    add("--val", nargs="+", type=Path, default=None,
        help=f"validation JSONL file(s), concatenated; unset: {' + '.join(str(x) for x in DEFAULT_VAL)}")
    add("--steps", type=int, default=None, help=f"optimizer steps of every run (the token budget); unset: "
                                                f"{DEFAULTS['steps']}")
    add("--eval-interval", type=int, default=None,
        help=f"steps between checkpoints evaluated on the common validation windows; unset: {DEFAULTS['eval_interval']}")
    add("--lr-sweep", default=None,
        help=f"comma-separated multipliers of each recipe's default lr (adamw: train.lr, muon: optim.matrix_lr), each "
             f"a full run; unset: {DEFAULTS['lr_sweep']}")
    add("--second-lr-sweep", "--train-lr-sweep", dest="second_lr_sweep", default=None,
        help=f"muon: comma-separated multipliers of its optim.embedding_lr, tried at its best optim.matrix_lr (\"\": "
             f"none); unset: {DEFAULTS['second_lr_sweep']}")
    add("--extend-edges", type=int, default=None,
        help=f"when a best lr is the smallest or largest tried, try up to N more values beyond it (the same ratio), "
             f"stopping once the best is inside; unset: {DEFAULTS['extend_edges']}")
    add("--recipes", default=None,
        help="comma-separated <optimizer>-<packing> (packings: " + ", ".join(PACKINGS) + "); unset: every "
             "available optimizer with every packing")
    add("--override", action="append", default=[], metavar="KEY=VALUE",
        help="an extra override for every run (repeatable), e.g. --override hardware.threads=2")
    add("--out", type=Path, default=None, help="output directory; unset: outputs/bench_learning/<timestamp>")
    add("--reuse", type=Path, default=None, metavar="DIR",
        help="an earlier --out directory of the same settings: its runs are taken from its results.json instead of "
             "trained again, e.g. to widen a sweep (--lr-sweep, --extend-edges) or add recipes")
    add("--keep-checkpoints", action="store_true",
        help="keep each run's checkpoints (about 15 MB each at the cpu preset)")
    add("--check-eval", action="store_true",
        help="let the trainer evaluate every run's final step too (always for bos_aligned, on its own layout), so "
             "that concat runs check this script's evaluation against the trainer's (on with --smoke)")
    add("--all-curves", action="store_true",
        help="evaluate every checkpoint of every run; by default only each recipe's best run gets its whole "
             "curve, the others their final checkpoint")
    add("--smoke", action="store_true",
        help=f"a quick check of the script: {SMOKE['steps']} steps of a tiny model on the shipped sample corpus, "
             f"recipes {SMOKE['recipes']}, lr multipliers {SMOKE['lr_sweep']} (flags given win)")
    args = p.parse_args(argv)
    defaults = dict(DEFAULTS)
    if args.smoke:
        defaults.update(SMOKE)
        args.check_eval = True
        args.override = SMOKE_OVERRIDES + args.override
        args.train = args.train or [sample_data_path("pretrain.jsonl")]
        args.val = args.val or [sample_data_path("val.jsonl")]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.eval_interval < 1 or args.extend_edges < 0:
        p.error(f"--steps ({args.steps}) and --eval-interval ({args.eval_interval}) must be >= 1, "
                f"--extend-edges ({args.extend_edges}) >= 0")
    args.lr_multipliers = multipliers(p, "--lr-sweep", args.lr_sweep, allow_empty=False)
    args.second_lr_multipliers = multipliers(p, "--second-lr-sweep", args.second_lr_sweep, allow_empty=True)
    args.out = args.out or Path("outputs/bench_learning") / time.strftime("%Y-%m-%d_%H-%M-%S")
    return args


def multipliers(p: argparse.ArgumentParser, flag: str, text: str, allow_empty: bool) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        p.error(f"{flag}={text!r}: expected comma-separated numbers, e.g. 0.5,1,2")
    if (not values and not allow_empty) or any(v <= 0 for v in values):
        p.error(f"{flag}={text!r}: expected positive multipliers, e.g. 0.5,1,2")
    return values


def rounded(lr: float) -> float:
    """An lr as it is passed on the command line (6 significant digits), so equal lrs compare equal."""
    return float(f"{lr:.6g}")


# --- recipes ---------------------------------------------------------------------------------------
@dataclass
class Recipe:
    optimizer: str
    packing: str
    lr_key: str  # swept first: train.lr, or the optimizer's first lr key (optim.matrix_lr)
    default_lr: float
    second_key: Optional[str] = None  # swept second, at the best first lr (muon: optim.embedding_lr)
    default_second_lr: Optional[float] = None

    @property
    def name(self) -> str:
        return f"{self.optimizer}-{self.packing}"

    @property
    def label(self) -> str:
        return f"{self.optimizer} {PACKING_LABELS[self.packing]}"

    @property
    def two_lrs(self) -> bool:
        """Whether a second lr key is swept after the first."""
        return self.second_key is not None

    def overrides(self, optim_group: bool, lr: float, second_lr: Optional[float]) -> list[str]:
        lrs = [f"{self.lr_key}={lr:g}"] + ([f"{self.second_key}={second_lr:g}"] if self.two_lrs else [])
        return ([f"optim={self.optimizer}"] if optim_group else []) + PACKINGS[self.packing] + lrs


def optimizers() -> tuple[list[str], bool]:
    """The optimizers to benchmark (adamw first) and whether they are a config group (conf/optim/)."""
    group = shipped_path("conf") / "optim"
    if not group.is_dir():
        return ["adamw"], False
    return sorted((p.stem for p in group.glob("*.yaml")), key=lambda name: (name != "adamw", name)), True


def composed_values(overrides: list[str], keys: Sequence[str]) -> dict[str, Any]:
    """The values of `keys` in the config `python -m zer02llm.train <overrides>` composes."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from zer02llm.config import register_configs

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(shipped_path("conf"))):
        cfg = compose("config", overrides)
        return {key: OmegaConf.select(cfg, key) for key in keys}


def select_recipes(spec: Optional[str], overrides: list[str]) -> tuple[list[Recipe], bool, list[str]]:
    """The recipes --recipes names (all available when None, adamw's first), whether optim is a config
    group, and notes."""
    available, optim_group = optimizers()
    notes = [] if "muon" in available else ["muon: not benchmarked, conf/optim/muon.yaml does not exist"]
    names = ([f"{o}-{p}" for o in available for p in PACKINGS] if spec is None
             else [n.strip() for n in spec.split(",") if n.strip()])
    recipes = []
    for name in names:
        optimizer, _, packing = name.partition("-")
        if optimizer not in available or packing not in PACKINGS:
            print(f"bench_learning: --recipes: {name!r} is not a recipe: expected <optimizer>-<packing> with optimizer "
                  f"one of {', '.join(available)} (conf/optim/) and packing one of {', '.join(PACKINGS)}",
                  file=sys.stderr)
            raise SystemExit(2)
        keys = LR_KEYS.get(optimizer, ("train.lr",))
        group = [f"optim={optimizer}"] if optim_group else []
        values = composed_values(group + user_overrides(overrides), keys)
        if not all(isinstance(v, (int, float)) for v in values.values()):
            print(f"bench_learning: the lrs of optim={optimizer} are not numbers: {values}", file=sys.stderr)
            raise SystemExit(2)
        second = keys[1] if len(keys) > 1 else None
        recipes.append(Recipe(optimizer, packing, keys[0], float(values[keys[0]]), second,
                              float(values[second]) if second else None))
    # adamw first: its baseline is measured before the others
    return sorted(recipes, key=lambda r: r.optimizer != "adamw"), optim_group, notes


def user_overrides(overrides: list[str]) -> list[str]:
    """The overrides that shape the config (hydra.* ones do not change a key we read)."""
    return [o for o in overrides if not o.lstrip("+~").startswith("hydra")]


# --- data ------------------------------------------------------------------------------------------
def check_files(paths: list[Path], what: str, defaults: bool) -> None:
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return
    if defaults:
        print(f"bench_learning: the shared corpora are not at {SHARED_DATA} (missing: "
              f"{', '.join(p.name for p in missing)}). Give --train and --val files, or --smoke to run on the "
              f"shipped sample corpus", file=sys.stderr)
    else:
        print(f"bench_learning: {what}: no such file: {', '.join(str(p) for p in missing)}", file=sys.stderr)
    raise SystemExit(2)


def concatenated(paths: list[Path], dest: Path) -> Path:
    """One JSONL file holding the lines of `paths` in order (the path itself when there is one)."""
    if len(paths) == 1:
        return paths[0].resolve()
    with open(dest, "wb") as out:
        for path in paths:
            data = path.read_bytes()
            out.write(data if data.endswith(b"\n") or not data else data + b"\n")
    return dest


def window_counts(train_file: Path, tokenizer: Tokenizer, cache_dir: Path, seq_len: int) -> dict[str, int]:
    """Training windows each packing makes of the file (how much of an epoch a run reads). Tokenizes the
    file into the cache the runs then read."""
    tokens = tokenize_to_cache(train_file, tokenizer, cache_dir, progress=False)
    counts = {}
    for name, overrides in PACKINGS.items():
        packing = overrides[0].split("=", 1)[1]
        counts[name] = len(pretrain_dataset(tokens, seq_len, packing, tokenizer.bos_id, tokenizer.pad_id))
    return counts


# --- one run ---------------------------------------------------------------------------------------
def cpu_snapshot() -> Optional[tuple[float, float, float]]:
    """(wall clock, busy CPU-seconds of the machine, CPU-seconds of this process and its finished children)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))
    return time.perf_counter(), (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own


def others_share(start: Optional[tuple[float, float, float]]) -> Optional[float]:
    """Share of the machine's CPU time that other processes took since `start` (None off Linux)."""
    end = cpu_snapshot()
    if start is None or end is None:
        return None
    wall, busy, own = (e - s for e, s in zip(end, start))
    return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1))) if wall > 0 else None


def train(overrides: list[str]) -> dict[str, Any]:
    """One training run in a subprocess; returns its status, wall time and the machine's load meanwhile."""
    start, snapshot = time.perf_counter(), cpu_snapshot()
    proc = subprocess.run([sys.executable, "-m", "zer02llm.train", *overrides], cwd=REPO_DIR, capture_output=True,
                          text=True)
    result = {"overrides": overrides, "returncode": proc.returncode,
              "process_seconds": round(time.perf_counter() - start, 2), "others_cpu_share": others_share(snapshot)}
    if proc.returncode != 0:
        result["error"] = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    return result


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def train_seconds(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Training wall time up to each logged step: every window's tokens / its tokens_per_s, summed."""
    seconds, total, tokens_before = {}, 0.0, 0
    for row in rows:
        if "tokens_per_s" not in row:
            continue
        total += (row["tokens"] - tokens_before) / row["tokens_per_s"]
        tokens_before = row["tokens"]
        seconds[row["step"]] = total
    return seconds


# --- evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_positions(model: torch.nn.Module, dataset: PackedDataset, byte_lengths: torch.Tensor, bos_id: int,
                       eos_id: int, document_mask: bool) -> dict[str, float]:
    """val_loss, val_bpb (as zer02llm.training.validation computes them) and the mean loss on the first
    FIRST_POSITIONS targets of each document against every other target, over all of `dataset`."""
    sums = torch.zeros(4, dtype=torch.float64)  # evaluation.loss_sums' four figures
    split = torch.zeros(4, dtype=torch.float64)  # first: loss, count; rest: loss, count
    for b in range(math.ceil(len(dataset) / EVAL_BATCH)):
        inputs, targets = dataset.batch(list(range(b * EVAL_BATCH, min(len(dataset), (b + 1) * EVAL_BATCH))))
        extra = {"doc_ids": document_ids(inputs, bos_id)} if document_mask else {}
        losses = token_losses(model(inputs, **extra).logits, targets).double()
        counted = targets != IGNORE_INDEX
        nbytes = byte_lengths[targets.clamp(min=0)] * counted
        text = nbytes > 0
        sums += torch.stack([losses.sum(), counted.sum().double(), losses[text].sum(), nbytes.sum().double()])
        first = first_positions_mask(inputs, targets, bos_id, FIRST_POSITIONS, eos_id)
        rest = counted & ~first
        split += torch.stack([losses[first].sum(), first.sum().double(), losses[rest].sum(), rest.sum().double()])
    metrics = metrics_from_sums(sums.tolist())
    first_loss, n_first, rest_loss, n_rest = split.tolist()
    return {"val_loss": metrics["val_loss"], "val_bpb": metrics["val_bpb"],
            "first8_loss": first_loss / n_first if n_first else float("nan"),
            "rest_loss": rest_loss / n_rest if n_rest else float("nan"), "first8_targets": int(n_first)}


def evaluate_checkpoint(checkpoint: Path, val: PackedDataset, tokenizer: Tokenizer,
                        seconds: dict[int, float]) -> dict[str, Any]:
    """One checkpoint on the common validation windows, with its document mask if it trained with one."""
    model = load_for_inference(str(checkpoint), device="cpu").model
    document_mask = bool(read_checkpoint_config(checkpoint)["config"]["data"].get("document_mask"))
    step = int(checkpoint.name.split("_")[-1])
    point = {"step": step, "train_seconds": round(seconds.get(step, float("nan")), 2)}
    point.update(evaluate_positions(model, val, torch.tensor(tokenizer.byte_lengths()), tokenizer.bos_id,
                                    tokenizer.eos_id, document_mask))
    return point


# --- the sweep -------------------------------------------------------------------------------------
@dataclass
class Bench:
    """What every run of the benchmark shares."""

    args: argparse.Namespace
    common: list[str]  # overrides of every run
    val_file: Path
    optim_group: bool
    val: PackedDataset
    tokenizer: Tokenizer
    reused: dict[tuple[str, float, float], dict[str, Any]]
    planned: int
    started: int = 0

    def train_and_evaluate(self, recipe: Recipe, lr: float, second_lr: Optional[float]) -> dict[str, Any]:
        """Train one recipe at one point of its sweep and evaluate its final checkpoint: its results.json entry."""
        args = self.args
        name = f"{recipe.name}-lr{lr:g}" + (f"-{recipe.second_key.split('.')[-1]}{second_lr:g}" if recipe.two_lrs else "")
        run_dir = (args.out / "runs" / name).resolve()
        shutil.rmtree(run_dir, ignore_errors=True)
        # the trainer's own final evaluation: informative where its layout differs (bos_aligned), and a
        # check of this script's evaluation where it is the same (--check-eval)
        trainer_val = recipe.packing == "bos_aligned" or args.check_eval
        overrides = [*self.common, f"data.val_path={self.val_file}" if trainer_val else "data.val_path=null",
                     *recipe.overrides(self.optim_group, lr, second_lr), f"hydra.run.dir={run_dir}"]
        run = {"recipe": recipe.name, "label": recipe.label, "optimizer": recipe.optimizer, "packing": recipe.packing,
               "lr_key": recipe.lr_key, "lr": lr, "second_key": recipe.second_key, "second_lr": second_lr,
               "run_dir": str(run_dir), **train(overrides),
               "final": None, "curve": []}
        rows = read_rows(run_dir)
        run["seconds_by_step"] = train_seconds(rows)
        own = [r["val_loss"] for r in rows if "val_loss" in r]
        rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
        run["own_layout_val_loss"] = own[-1] if own else None
        run["tokens"] = rows[-1].get("tokens") if rows else None
        run["tokens_per_s"] = sum(rates) / len(rates) if rates else None
        summary = run_dir / "summary.json"
        run["summary"] = json.loads(summary.read_text()) if summary.exists() else None
        final = run_dir / "checkpoints" / f"step_{args.steps:07d}"
        if run["returncode"] == 0 and final.is_dir():
            run["final"] = evaluate_checkpoint(final, self.val, self.tokenizer, run["seconds_by_step"])
            run["curve"] = [run["final"]]
        return run

    def evaluate_curve(self, run: dict[str, Any]) -> None:
        """Evaluate the run's checkpoints before the final one (if still there): its whole curve."""
        earlier = [c for c in list_checkpoints(Path(run["run_dir"]) / "checkpoints")
                   if int(c.name.split("_")[-1]) < run["final"]["step"]]
        if earlier:
            run["curve"] = ([evaluate_checkpoint(c, self.val, self.tokenizer, run["seconds_by_step"]) for c in earlier]
                            + [run["final"]])

    def sweep(self, recipe: Recipe) -> list[dict[str, Any]]:
        """Every lr of the recipe's sweep (module docstring), the best (lowest final val loss) marked, with its
        whole curve evaluated (every run's with --all-curves). Checkpoints go once evaluated."""
        args = self.args
        runs: list[dict[str, Any]] = []
        best: Optional[dict[str, Any]] = None
        start = recipe.default_second_lr

        def drop_checkpoints(run: dict[str, Any]) -> None:
            if not args.keep_checkpoints and not run.get("reused"):  # an earlier benchmark's files stay
                shutil.rmtree(Path(run["run_dir"]) / "checkpoints", ignore_errors=True)

        def try_point(lr: float, second_lr: Optional[float]) -> None:
            nonlocal best
            lr = rounded(lr)
            second_lr = rounded(second_lr) if recipe.two_lrs else None
            if any(r["lr"] == lr and r["second_lr"] == second_lr for r in runs):
                return
            self.started += 1
            self.planned = max(self.planned, self.started)
            point = f"{recipe.lr_key}={lr:g}" + (f", {recipe.second_key}={second_lr:g}" if recipe.two_lrs else "")
            print(f"[{self.started}/{self.planned}] {recipe.label}, {point} ...", end=" ", flush=True)
            run = self.reused.get((recipe.name, lr, second_lr))
            if run is not None:
                print("from --reuse:", end=" ")
            else:
                run = self.train_and_evaluate(recipe, lr, second_lr)
            runs.append(run)
            if run["final"]:
                print(f"val loss {run['final']['val_loss']:.4f}, bpb {run['final']['val_bpb']:.4f}, "
                      f"{run['final']['train_seconds']:.0f} s training, {run['process_seconds']:.0f} s in all")
            else:
                print(f"failed (exit {run['returncode']}): {run.get('error', 'no final checkpoint')}")
            if args.all_curves and run["final"]:
                self.evaluate_curve(run)
            if run["final"] and (best is None or run["final"]["val_loss"] < best["final"]["val_loss"]):
                if best is not None:
                    drop_checkpoints(best)
                best = run
            else:
                drop_checkpoints(run)

        def line(vary: str) -> list[float]:
            """The values of `vary` tried along its sweep: the first lr at the second's default, the second lr
            at the best first lr (which the second sweep keeps)."""
            if not recipe.two_lrs:
                return [r["lr"] for r in runs]
            if vary == "lr":
                return [r["lr"] for r in runs if r["second_lr"] == rounded(start)]
            return [r["second_lr"] for r in runs if r["lr"] == best["lr"]]

        def extend(vary: str) -> None:
            for _ in range(args.extend_edges):
                beyond = next_beyond(line(vary), best[vary]) if best else None
                if beyond is None:
                    return
                self.planned += 1
                try_point(beyond if vary == "lr" else best["lr"], best["second_lr"] if vary == "lr" else beyond)

        self.planned += len(args.lr_multipliers) - 1
        for m in args.lr_multipliers:
            try_point(recipe.default_lr * m, start)
        extend("lr")
        if recipe.two_lrs and best is not None and args.second_lr_multipliers:
            new = [m for m in args.second_lr_multipliers if rounded(start * m) not in line("second_lr")]
            self.planned += len(new)
            for m in new:
                try_point(best["lr"], start * m)
            extend("second_lr")
        if best is not None:
            best["best"] = True
            swept = [("lr", recipe.lr_key)] + ([("second_lr", recipe.second_key)] if recipe.two_lrs else [])
            best["at_sweep_edge"] = [key for vary, key in swept if next_beyond(line(vary), best[vary]) is not None]
            if len(best["curve"]) < 2:  # (a reused run whose checkpoints are gone keeps its final point alone)
                self.evaluate_curve(best)
            drop_checkpoints(best)
        return runs


def next_beyond(values: list[float], best: float) -> Optional[float]:
    """One value past the end of `values` that `best` is at (the ratio of the last two values there), or
    None when `best` lies inside them (or fewer than two values were tried)."""
    tried = sorted(set(values))
    if len(tried) < 2 or tried[0] < best < tried[-1]:
        return None
    return rounded(best * best / tried[-2]) if best == tried[-1] else rounded(best * best / tried[1])


def reusable_runs(directory: Optional[Path], settings: dict[str, Any]) -> dict[tuple[str, float, float], dict]:
    """The finished runs of an earlier results.json by (recipe, lr, second lr), refused unless its settings
    are these."""
    if directory is None:
        return {}
    file = directory / "results.json"
    if not file.is_file():
        print(f"bench_learning: --reuse {directory}: no results.json there", file=sys.stderr)
        raise SystemExit(2)
    earlier = json.loads(file.read_text())
    differing = [f"{key}: {earlier['settings'].get(key)!r} there, {settings[key]!r} here" for key in REUSE_SETTINGS
                 if earlier["settings"].get(key) != settings[key]]
    if differing:
        print(f"bench_learning: --reuse {directory}: its runs were made with other settings:\n  "
              + "\n  ".join(differing), file=sys.stderr)
        raise SystemExit(2)
    runs = {}
    for run in earlier["runs"]:
        if not run.get("final"):
            continue
        if "second_lr" not in run:  # written when muon's second lr was train.lr: another key, not reusable
            continue
        runs[(run["recipe"], run["lr"], run["second_lr"])] = {**run, "reused": str(directory)}
    return runs


# --- figures ---------------------------------------------------------------------------------------
def crossing(points: list[dict[str, Any]], target: float, x: str) -> tuple[Optional[float], bool]:
    """First `x` (step or train_seconds) where the curve's val_loss falls to `target`, linear between
    evaluations; (None, False) when it never does. The flag: already at the first evaluation (an upper bound)."""
    for i, point in enumerate(points):
        if point["val_loss"] <= target:
            if i == 0:
                return float(point[x]), True
            before = points[i - 1]
            fraction = (before["val_loss"] - target) / (before["val_loss"] - point["val_loss"])
            return before[x] + fraction * (point[x] - before[x]), False
    return None, False


def to_reach(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Steps and training seconds `run` takes to reach the final val loss of `reference`, and the steps
    as a multiple of those the reference itself takes (its last step, unless its curve dips earlier)."""
    target = reference["final"]["val_loss"]
    reference_steps, _ = crossing(reference["curve"], target, "step")
    steps, first = crossing(run["curve"], target, "step")
    secs, _ = crossing(run["curve"], target, "train_seconds")
    return {"reference": reference["recipe"], "target_val_loss": target, "steps": steps, "at_first_eval": first,
            "train_seconds": secs, "steps_ratio": steps / reference_steps if steps is not None and reference_steps
            else None}


def summarise(runs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], Optional[str]]:
    """The best run of each recipe, and for every run with a whole curve the steps and seconds to reach the
    final val loss of the baseline and of adamw with the same packing; returns (best by recipe, baseline)."""
    best = {run["recipe"]: run for run in runs if run.get("best")}
    baseline = BASELINE if BASELINE in best else next(iter(best), None)
    if baseline is None:
        return best, None
    for run in runs:
        if not run["final"] or len(run["curve"]) < 2:  # only the final checkpoint evaluated
            continue
        run["to_baseline"] = to_reach(run, best[baseline])
        peer = best.get(f"adamw-{run['packing']}")
        if run["optimizer"] != "adamw" and peer is not None:
            run["to_same_packing"] = to_reach(run, peer)
    return best, baseline


def fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_steps(to: Optional[dict[str, Any]]) -> str:
    """"274 (0.69x)", "<= 50 (0.13x)", "not reached", or "-" when not measured."""
    if not to:
        return "-"
    if to["steps"] is None:
        return "not reached"
    return f"{'<= ' if to['at_first_eval'] else ''}{to['steps']:.0f} ({to['steps_ratio']:.2f}x)"


def fmt_seconds(to: Optional[dict[str, Any]]) -> str:
    if not to:
        return "-"
    if to["train_seconds"] is None:
        return "not reached"
    return f"{'<= ' if to['at_first_eval'] else ''}{to['train_seconds']:.1f}"


def fmt_lrs(run: dict[str, Any]) -> str:
    if run["lr_key"] == "train.lr":
        return f"train.lr {run['lr']:.3g}"
    if not run.get("second_key"):
        return f"{run['lr_key'].removeprefix('optim.')} {run['lr']:.3g}"
    return (f"{run['lr_key'].removeprefix('optim.')} {run['lr']:.3g}, {run['second_key'].removeprefix('optim.')} "
            f"{run['second_lr']:.3g}")


def markdown(result: dict[str, Any]) -> str:
    runs, best, baseline, s = result["runs"], result["best"], result["baseline"], result["settings"]
    lines = [f"Learning benchmark: {s['steps']} steps x {s['tokens_per_step']} tokens "
             f"({s['batch_size']} x {s['seq_len']}), model {s['params'] / 1e6:.2f}M parameters, validation on all "
             f"{s['val_windows']} concat windows of {s['val_name']} ({s['val_tokens']} tokens); "
             f"train: {s['train_name']}. Learning rates: {', '.join(f'{m:g}' for m in s['lr_multipliers'])} x each "
             f"recipe's default; muon's optim.embedding_lr "
             f"{', '.join(f'{m:g}' for m in s['second_lr_multipliers']) or 'not swept'} x its default; up to "
             f"{s['extend_edges']} more beyond an edge winner.", ""]
    if baseline:
        lines += [f"Baseline: {baseline} at its best lr, final val loss {best[baseline]['final']['val_loss']:.4f}.", ""]
    lines += ["| recipe | best lr | val loss | val bpb | first-8 loss | rest loss | steps to baseline (x) | "
              "train s to baseline | steps to adamw, same packing (x) | train s | tokens/s | epochs | others' CPU |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in best.values():
        final = run["final"]
        edge = f" (edge: {', '.join(run['at_sweep_edge'])})" if run.get("at_sweep_edge") else ""
        others = run["others_cpu_share"]
        lines.append(f"| {run['label']} | {fmt_lrs(run)}{edge} | {final['val_loss']:.4f} | {final['val_bpb']:.4f} | "
                     f"{final['first8_loss']:.3f} | {final['rest_loss']:.3f} | {fmt_steps(run.get('to_baseline'))} | "
                     f"{fmt_seconds(run.get('to_baseline'))} | {fmt_steps(run.get('to_same_packing'))} | "
                     f"{final['train_seconds']:.1f} | {fmt(run['tokens_per_s'], 0)} | {fmt(run['epochs'], 2)} | "
                     f"{'n/a' if others is None else f'{others:.0%}'} |")
    lines += ["", "Learning-rate sweep (every run, the full budget each; * = the recipe's best):", "",
              "| recipe | lr | second lr | val loss | val bpb | first-8 | rest | own-layout val loss | train s | "
              "process s | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(dict.fromkeys(r["recipe"] for r in runs))}
    for run in sorted(runs, key=lambda r: (order[r["recipe"]], r.get("second_lr") or 0.0, r["lr"])):
        final = run["final"]
        second = (f"{run['second_key'].removeprefix('optim.')} {run['second_lr']:.3g}" if run.get("second_key")
                  else "-")
        cells = [run["label"], f"{run['lr_key'].removeprefix('optim.')} {run['lr']:.3g}", second]
        if final:
            cells += [f"{final['val_loss']:.4f}{' *' if run.get('best') else ''}", f"{final['val_bpb']:.4f}",
                      f"{final['first8_loss']:.3f}", f"{final['rest_loss']:.3f}", fmt(run["own_layout_val_loss"], 4),
                      f"{final['train_seconds']:.1f}", f"{run['process_seconds']:.0f}", "ok"]
        else:
            cells += ["-"] * 6 + [f"{run['process_seconds']:.0f}", f"failed (exit {run['returncode']})"]
        lines.append("| " + " | ".join(cells) + " |")
    steps = sorted({p["step"] for run in best.values() for p in run["curve"]})
    lines += ["", "Validation loss / bpb (train seconds) by step, each recipe at its best lr:", "",
              "| step | " + " | ".join(run["label"] for run in best.values()) + " |", "|---|" + "---|" * len(best)]
    for step in steps:
        cells = []
        for run in best.values():
            point = next((p for p in run["curve"] if p["step"] == step), None)
            cells.append(f"{point['val_loss']:.3f} / {point['val_bpb']:.3f} ({point['train_seconds']:.0f} s)"
                         if point else "-")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", *(f"- {note}" for note in result["notes"])]
    return "\n".join(lines).rstrip() + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"concat": "tab:blue", "docmask": "tab:orange", "bos_aligned": "tab:green"}
    styles = ["-", "--", ":", "-."]
    optimizers = sorted({run["optimizer"] for run in result["best"].values()}, key=lambda o: (o != "adamw", o))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for run in result["best"].values():
        style = styles[optimizers.index(run["optimizer"]) % len(styles)]
        for ax, x in zip(axes, ("step", "train_seconds")):
            ax.plot([p[x] for p in run["curve"]], [p["val_loss"] for p in run["curve"]], style, marker="o",
                    markersize=3, color=colours[run["packing"]], label=f"{run['label']} ({fmt_lrs(run)})")
    if result["baseline"]:
        target = result["best"][result["baseline"]]["final"]["val_loss"]
        for ax in axes:
            ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"baseline final {target:.3f}")
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("training wall seconds (evaluation excluded)")
    axes[0].set_ylabel("validation loss (concat windows)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("validation loss of each recipe at its best lr")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- main ------------------------------------------------------------------------------------------
def check_evaluation(runs: list[dict[str, Any]]) -> tuple[Optional[dict[str, Any]], list[str]]:
    """Where the trainer evaluated a concat-layout run (--check-eval), its final val loss and this script's
    are over the same windows and must agree: (the check's figures or None, warnings)."""
    diffs = {f"{r['recipe']} ({fmt_lrs(r)})": abs(r["own_layout_val_loss"] - r["final"]["val_loss"]) for r in runs
             if r["final"] and r["packing"] != "bos_aligned" and r["own_layout_val_loss"] is not None}
    if not diffs:
        return None, []
    warnings = [f"WARNING {name}: the trainer's final val loss differs from this script's by {diff:.2e} on the "
                f"same windows" for name, diff in diffs.items() if diff > 1e-4]
    return {"runs": len(diffs), "max_abs_diff": max(diffs.values())}, warnings


def result_notes(args: argparse.Namespace, runs: list[dict[str, Any]], best: dict[str, dict[str, Any]],
                 baseline: Optional[str], eval_check: Optional[dict[str, Any]], warnings: list[str]) -> list[str]:
    notes = list(warnings)
    if eval_check and not warnings:
        notes.append(f"check: on {eval_check['runs']} concat-layout runs the trainer's final val loss equals this "
                     f"script's (largest difference {eval_check['max_abs_diff']:.1e})")
    loaded = [r["others_cpu_share"] for r in runs if r["others_cpu_share"] is not None]
    if loaded and max(loaded) > 0.1:
        notes.append(f"other processes took up to {max(loaded):.0%} of the CPU time during a run (mean "
                     f"{sum(loaded) / len(loaded):.0%}): the seconds are noisy, the steps are not")
    edges = [f"{name} ({', '.join(run['at_sweep_edge'])})" for name, run in best.items() if run.get("at_sweep_edge")]
    if edges:
        notes.append(f"best lr at an end of the values tried for {'; '.join(edges)}: the optimum may lie beyond "
                     f"(widen with --reuse <this directory> --extend-edges N)")
    if args.reuse:
        notes.append(f"{sum(1 for r in runs if r.get('reused'))} of the {len(runs)} runs are reused from {args.reuse}")
    if baseline and baseline != BASELINE:
        notes.append(f"{BASELINE} was not run: the baseline is {baseline}")
    return notes


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    defaults = args.train is None
    args.train = args.train or DEFAULT_TRAIN
    args.val = args.val or DEFAULT_VAL
    check_files(args.train, "--train", defaults)
    check_files(args.val, "--val", defaults and args.val == DEFAULT_VAL)
    torch.set_num_threads(1)  # evaluation here runs between trainings, never beside one
    recipes, optim_group, notes = select_recipes(args.recipes, args.override)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_learning-"))
    try:
        train_file = concatenated(args.train, tmp / "train.jsonl")
        val_file = concatenated(args.val, tmp / "val.jsonl")
        cache_dir = tmp / "cache"
        common = [f"data.train_path={train_file}", f"data.cache_dir={cache_dir}", f"train.max_steps={args.steps}",
                  f"train.eval_interval={args.steps}", "train.eval_batches=-1", f"train.log_interval={args.eval_interval}",
                  f"train.save_interval={args.eval_interval}",
                  f"train.keep_checkpoints={math.ceil(args.steps / args.eval_interval) + 1}", "hardware.threads=1",
                  *args.override]
        shape = composed_values(user_overrides(common), ["data.seq_len", "train.batch_size", "train.grad_accum",
                                                         "train.seed", "hardware.name", "tokenizer.path"])
        tokenizer = Tokenizer.load(shape["tokenizer.path"])
        seq_len = shape["data.seq_len"]
        windows = window_counts(train_file, tokenizer, cache_dir, seq_len)
        val = PackedDataset(tokenize_to_cache(val_file, tokenizer, cache_dir, progress=False), seq_len)
        sequences = shape["train.batch_size"] * shape["train.grad_accum"]
        settings = {"steps": args.steps, "eval_interval": args.eval_interval, "overrides": args.override,
                    "train_name": " + ".join(p.name for p in args.train), "val_name": " + ".join(p.name for p in args.val),
                    "seq_len": seq_len, "batch_size": shape["train.batch_size"], "grad_accum": shape["train.grad_accum"],
                    "seed": shape["train.seed"], "val_windows": len(val)}
        bench = Bench(args, common, val_file, optim_group, val, tokenizer, reusable_runs(args.reuse, settings),
                      planned=len(recipes))
        print(f"{len(recipes)} recipes, each at {len(args.lr_multipliers)}+ learning rates, runs of {args.steps} steps "
              f"x {sequences} x {seq_len} tokens; validation: {len(val)} concat windows; results in {args.out}")
        for note in notes:
            print(f"note: {note}")
        runs: list[dict[str, Any]] = []
        started = time.perf_counter()
        for recipe in recipes:
            for run in bench.sweep(recipe):
                run["epochs"] = args.steps * sequences / windows[recipe.packing]
                runs.append(run)
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    best, baseline = summarise(runs)
    eval_check, warnings = check_evaluation(runs)
    notes += result_notes(args, runs, best, baseline, eval_check, warnings)
    settings.update({"lr_multipliers": args.lr_multipliers, "second_lr_multipliers": args.second_lr_multipliers,
                     "extend_edges": args.extend_edges,
                     "tokens_per_step": sequences * seq_len, "hardware": shape["hardware.name"],
                     "params": next((r["summary"]["params"] for r in runs if r.get("summary")), 0),
                     "smoke": args.smoke, "train_windows": windows, "val_tokens": len(val) * seq_len,
                     "first_positions": FIRST_POSITIONS, "seconds": round(elapsed, 1), "eval_check": eval_check,
                     "reused_from": str(args.reuse) if args.reuse else None,
                     "runs_reused": sum(1 for r in runs if r.get("reused")),
                     "process_seconds_all_runs": round(sum(r["process_seconds"] for r in runs), 1)})
    machine = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
               "processor": platform.processor() or platform.machine()}
    result = {"settings": settings, "machine": machine, "baseline": baseline, "notes": notes, "runs": runs,
              "best": best}
    table = markdown(result)
    (args.out / "results.md").write_text(table)
    png = plot(result, args.out / "curves.png") if best else None
    best_summary = {name: {k: run.get(k) for k in ("lr_key", "lr", "second_key", "second_lr", "at_sweep_edge", "final", "to_baseline",
                                                   "to_same_packing")} for name, run in best.items()}
    (args.out / "results.json").write_text(json.dumps({**result, "best": best_summary}, indent=1) + "\n")
    print()
    print(table)
    reused = (f" ({settings['runs_reused']} runs reused from {args.reuse}; the processes of all runs took "
              f"{settings['process_seconds_all_runs'] / 60:.1f} min)" if args.reuse else "")
    print(f"{elapsed / 60:.1f} min{reused}; wrote {args.out / 'results.json'}, {args.out / 'results.md'}"
          + (f", {png}" if png else ""))
    return 0 if all(r["final"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
