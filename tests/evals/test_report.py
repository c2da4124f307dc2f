"""The report card's MFU: training FLOPs per second over the devices' peak, on a GPU whose peak is known; n/a on
the CPU. Run directories are fabricated (summary.json and the trainer's report.json), the peak table faked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from zer02llm import hardware
from zer02llm.evals.report import RECORD, write_report

SUMMARY = {"mode": "pretrain", "params": 1000, "tokens": 4096, "flops_per_token": 3_000_000_000,
           "tokens_per_s": 50_000.0, "wall_seconds": 12.0}


def run_dir(tmp_path: Path, environment: dict) -> Path:
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY), encoding="utf-8")
    (tmp_path / RECORD).write_text(json.dumps({"environment": environment, "samples": []}), encoding="utf-8")
    return tmp_path


def mfu_cell(report: str) -> str:
    header = next(line for line in report.splitlines() if line.startswith("| parameters |"))
    row = report.splitlines()[report.splitlines().index(header) + 2]
    return [c.strip() for c in row.strip("|").split("|")][header.strip("|").split("|").index(" MFU ")]


@pytest.mark.parametrize("devices", [1, 4])
def test_mfu_on_a_gpu_is_flops_per_second_over_the_devices_peak(tmp_path, monkeypatch, devices):
    monkeypatch.setattr(hardware, "PEAK_BF16_TFLOPS", [("Fake GPU", 2.0)])  # 2e12 FLOP/s a device
    path = write_report(run_dir(tmp_path, {"device": "cuda:0", "gpu": "Fake GPU 80GB", "devices": devices}))
    report = path.read_text(encoding="utf-8")
    expected = 50_000.0 * 3e9 / (2e12 * devices)  # 0.075 on one device
    assert mfu_cell(report) == f"{100 * expected:.1f}%"
    assert re.search(r"MFU: .*peak 2 TFLOP/s \(Fake GPU, dense bf16\) x " + str(devices), report)
    assert hardware.mfu(50_000.0, 3e9, 2.0, devices) == pytest.approx(expected)


def test_mfu_is_not_available_on_the_cpu_or_an_unknown_gpu(tmp_path, monkeypatch):
    report = write_report(run_dir(tmp_path, {"device": "cpu", "devices": 1})).read_text(encoding="utf-8")
    assert mfu_cell(report) == "n/a on CPU" and "MFU:" not in report
    monkeypatch.setattr(hardware, "PEAK_BF16_TFLOPS", [("Fake GPU", 2.0)])
    report = write_report(run_dir(tmp_path, {"device": "cuda:0", "gpu": "Other GPU"})).read_text(encoding="utf-8")
    assert mfu_cell(report) == "n/a (no peak FLOP/s known for Other GPU)"


def test_the_peak_table_finds_the_first_key_in_a_devices_name():
    assert hardware.peak_tflops("NVIDIA H100 PCIe") == ("H100 PCIe", 756.0)  # not the SXM part's 989
    assert hardware.peak_tflops("NVIDIA H100 80GB HBM3") == ("H100", 989.0)
    assert hardware.peak_tflops(None) is None and hardware.peak_tflops("cpu") is None


def test_a_grpo_card_shows_held_out_figures_before_and_after_and_no_perplexity(tmp_path):
    run = run_dir(tmp_path, {"device": "cpu"})
    (run / "summary.json").write_text(json.dumps({**SUMMARY, "mode": "grpo", "final_loss": 0.02,
                                                  "final_val_loss": -0.395}), encoding="utf-8")
    rows = [{"step": 0, "val_loss": -0.34, "val_reward": 0.34, "val_sampled_reward": 0.26},
            {"step": 10, "loss": 0.1, "reward": 0.3},
            {"step": 100, "loss": 0.02, "reward": 0.39, "val_loss": -0.395, "val_reward": 0.395,
             "val_sampled_reward": 0.363}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 110, "val_lo',
                                       encoding="utf-8")  # a run killed mid-write: the torn line is skipped
    report = write_report(run).read_text(encoding="utf-8")
    assert "perplexity" not in report  # e^(-reward) means nothing
    assert "| final train loss | final validation loss |\n| --- | --- |\n| 0.0200 | -0.3950 |" in report
    assert "| figure | step 0 (the starting weights) | step 100 |" in report
    assert "| val_sampled_reward | 0.2600 | 0.3630 |" in report and "| val_reward | 0.3400 | 0.3950 |" in report
    assert "| reward |" not in report  # training rows are not validation


def test_a_pretraining_card_keeps_perplexity_and_shows_its_first_and_last_validation(tmp_path):
    run = run_dir(tmp_path, {"device": "cpu"})
    (run / "summary.json").write_text(json.dumps({**SUMMARY, "final_val_loss": 1.0}), encoding="utf-8")
    rows = [{"step": 100, "val_loss": 2.0, "val_ppl": 7.389}, {"step": 400, "val_loss": 1.0, "val_ppl": 2.718}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = write_report(run).read_text(encoding="utf-8")
    assert "| perplexity |" in report and "| 2.7183 |" in report  # e^1.0
    assert "| figure | step 100 | step 400 |" in report and "| val_loss | 2.0000 | 1.0000 |" in report
