"""scripts/bench_learning.py: its smoke run writes the JSON, Markdown and PNG with every figure; its
evaluation is the trainer's; interpolation to the baseline; a clear exit without the shared corpora.
No timing limits."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from zer02llm.config import ModelConfig
from zer02llm.data.pretrain import PackedDataset, tokenize_to_cache
from zer02llm.training.validation import evaluate
from zer02llm.model import Transformer, document_ids
from zer02llm.resources import sample_data_path
from zer02llm.tokenizer import Tokenizer

from conftest import load_script as load_script_named

REPO_DIR = Path(__file__).resolve().parents[2]
SCRIPT = REPO_DIR / "scripts" / "bench_learning.py"


def load_script():
    return load_script_named("bench_learning")


@pytest.mark.slow
def test_smoke_run_writes_json_markdown_and_png(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, f"bench_learning.py failed:\n{proc.stdout}\n{proc.stderr}"
    result = json.loads((out / "results.json").read_text())
    settings = result["settings"]
    assert settings["smoke"] and settings["steps"] == 20 and settings["lr_multipliers"] == [1.0, 2.0]
    runs = result["runs"]
    # adamw: train.lr x 1, 2; muon: optim.matrix_lr x 1, 2 at the shipped optim.embedding_lr, then
    # optim.embedding_lr x 2 at the better optim.matrix_lr
    shipped = OmegaConf.load(REPO_DIR / "conf" / "optim" / "muon.yaml")
    matrix, embedding = shipped.matrix_lr, shipped.embedding_lr
    assert [(r["recipe"], r["lr_key"], r["second_key"]) for r in runs] == [("adamw-concat", "train.lr", None)] * 2 + [
        ("muon-bos_aligned", "optim.matrix_lr", "optim.embedding_lr")] * 3
    assert [(r["lr"], r["second_lr"]) for r in runs[:4]] == [(1e-3, None), (2e-3, None), (matrix, embedding),
                                                             (2 * matrix, embedding)]
    better = min(runs[2:4], key=lambda r: r["final"]["val_loss"])["lr"]
    assert (runs[4]["lr"], runs[4]["second_lr"]) == (better, 2 * embedding)
    assert f"optim.matrix_lr={better:g}" in runs[4]["overrides"]
    assert f"optim.embedding_lr={2 * embedding:g}" in runs[4]["overrides"]
    assert not any(o.startswith("train.lr=") for r in runs[2:] for o in r["overrides"])  # muon does not read it
    for run in runs:
        final = run["final"]
        assert run["returncode"] == 0 and final["step"] == 20
        assert all(math.isfinite(final[k]) and final[k] > 0
                   for k in ("val_loss", "val_bpb", "first8_loss", "rest_loss", "train_seconds"))
        assert final["first8_targets"] > 0
        assert not (Path(run["run_dir"]) / "checkpoints").exists()  # removed once evaluated
        assert (Path(run["run_dir"]) / "metrics.jsonl").is_file()
    assert result["baseline"] == "adamw-concat"
    best = result["best"]
    assert set(best) == {"adamw-concat", "muon-bos_aligned"}
    for name, entry in best.items():
        chosen = min((r for r in runs if r["recipe"] == name), key=lambda r: r["final"]["val_loss"])
        assert (entry["lr"], entry["second_lr"]) == (chosen["lr"], chosen["second_lr"]) and chosen["best"]
        assert [p["step"] for p in chosen["curve"]] == [10, 20]  # the best lr's whole curve
        assert entry["to_baseline"]["target_val_loss"] == best["adamw-concat"]["final"]["val_loss"]
    assert best["adamw-concat"]["to_baseline"]["steps"] <= 20
    # the trainer evaluated the concat runs on the same windows (--check-eval, on in --smoke): same figure
    assert result["settings"]["eval_check"]["runs"] == 2 and result["settings"]["eval_check"]["max_abs_diff"] < 1e-4
    # a bos_aligned run's own validation set is laid out differently: reported apart, not compared
    assert all(r["own_layout_val_loss"] is not None for r in runs)
    table = (out / "results.md").read_text()
    assert "| recipe | best lr | val loss | val bpb | first-8 loss | rest loss | steps to baseline (x) |" in table
    assert "adamw concat" in table and "muon bos-aligned" in table and "Learning-rate sweep" in table
    # the best row, then one sweep row per run of the recipe (edge extension may add runs)
    rows = [line for line in table.splitlines() if line.startswith("| muon bos-aligned |")]
    assert len(rows) == 1 + sum(r["recipe"] == "muon-bos_aligned" for r in runs)
    assert table in proc.stdout
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert not list(tmp_path.glob("*.jsonl"))  # the concatenated corpora are temporary


def test_missing_shared_corpora_is_a_clear_exit_2(tmp_path, monkeypatch, capsys) -> None:
    script = load_script()
    monkeypatch.setattr(script, "SHARED_DATA", tmp_path / "absent")
    monkeypatch.setattr(script, "DEFAULT_TRAIN", [tmp_path / "absent" / "pretrain_en.jsonl"])
    monkeypatch.setattr(script, "DEFAULT_VAL", [tmp_path / "absent" / "val_en.jsonl"])
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "absent") in err and "--train and --val" in err and "--smoke" in err
    assert not (tmp_path / "out").exists()


def test_next_beyond_steps_past_an_end_by_the_same_ratio() -> None:
    next_beyond = load_script().next_beyond
    assert next_beyond([1e-3, 2e-3, 4e-3], 4e-3) == 8e-3
    assert next_beyond([1e-3, 2e-3, 4e-3], 1e-3) == 5e-4
    assert next_beyond([1e-3, 2e-3, 4e-3], 2e-3) is None  # inside: no more
    assert next_beyond([0.02], 0.02) is None  # one value: no direction
    assert next_beyond([0.005, 0.01, 0.02, 0.0025], 0.0025) == 0.00125


def test_muon_recipes_sweep_its_group_lrs_and_adamw_train_lr() -> None:
    script = load_script()
    (adamw, muon), optim_group, _ = script.select_recipes("muon-docmask,adamw-docmask", [])
    shipped = OmegaConf.load(REPO_DIR / "conf" / "optim" / "muon.yaml")
    assert optim_group and (adamw.optimizer, muon.optimizer) == ("adamw", "muon")  # adamw first: the baseline
    assert (muon.lr_key, muon.default_lr, muon.second_key, muon.default_second_lr) == (
        "optim.matrix_lr", shipped.matrix_lr, "optim.embedding_lr", shipped.embedding_lr)
    assert (adamw.lr_key, adamw.default_lr, adamw.second_key) == ("train.lr", 1e-3, None)  # the cpu preset's
    assert muon.two_lrs and not adamw.two_lrs
    assert muon.overrides(True, 0.005, 0.03) == ["optim=muon", "data.packing=concat", "data.document_mask=true",
                                                 "optim.matrix_lr=0.005", "optim.embedding_lr=0.03"]
    assert adamw.overrides(False, 2e-3, None) == ["data.packing=concat", "data.document_mask=true", "train.lr=0.002"]


def test_crossing_interpolates_between_evaluations() -> None:
    crossing = load_script().crossing
    curve = [{"step": 50, "train_seconds": 5.0, "val_loss": 7.0}, {"step": 100, "train_seconds": 10.0, "val_loss": 6.0},
             {"step": 150, "train_seconds": 16.0, "val_loss": 5.0}]
    assert crossing(curve, 5.5, "step") == (125.0, False)
    assert crossing(curve, 5.5, "train_seconds") == (13.0, False)
    assert crossing(curve, 6.0, "step") == (100.0, False)
    assert crossing(curve, 7.5, "step") == (50.0, True)  # already at the first evaluation: an upper bound
    assert crossing(curve, 4.0, "step") == (None, False)


@pytest.mark.parametrize("document_mask", [False, True])
def test_evaluation_matches_the_trainers_and_splits_by_position(tmp_path, document_mask) -> None:
    script = load_script()
    tokenizer = Tokenizer.load()
    val = PackedDataset(tokenize_to_cache(sample_data_path("val.jsonl"), tokenizer, tmp_path, progress=False), 32)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2,
                                    vocab_size=tokenizer.vocab_size)).eval()
    byte_lengths = torch.tensor(tokenizer.byte_lengths())
    got = script.evaluate_positions(model, val, byte_lengths, tokenizer.bos_id, tokenizer.eos_id, document_mask)
    kwargs = (lambda inputs: {"doc_ids": document_ids(inputs, tokenizer.bos_id)}) if document_mask else (lambda i: {})
    expected = evaluate(model, val, script.EVAL_BATCH, -1, byte_lengths, torch.device("cpu"), forward_kwargs=kwargs)
    assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-9)
    assert got["val_bpb"] == pytest.approx(expected["val_bpb"], rel=1e-9)
    n_targets = len(val) * 32
    n_first = got["first8_targets"]
    assert 0 < n_first < n_targets
    mean = (got["first8_loss"] * n_first + got["rest_loss"] * (n_targets - n_first)) / n_targets
    assert mean == pytest.approx(got["val_loss"], rel=1e-9)
