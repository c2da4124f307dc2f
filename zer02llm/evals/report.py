"""The report card: report.md in a run directory, what the run was and what its model can do.

Everything comes from the run directory's own files (config.yaml, Hydra's overrides, summary.json,
eval_results.json, loss.png) plus report.json, which the trainer writes at the end of a run with what only it
knows (the environment, a few greedy generations). So `python -m zer02llm.evaluate` can refresh the card with
new task scores, and `compare_reports` can set several runs side by side from the same files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from zer02llm.config import CHAT_MODES, Config
from zer02llm.resources import REPO_DIR

REPORT = "report.md"
RECORD = "report.json"  # what the trainer knew: environment and sample generations
SAMPLE_PROMPTS = {  # greedy continuations shown on the card; chat models are asked, the others continue text
    "pretrain": ["Today is Monday. Tomorrow will be", "There are twelve months in a year, and", "小明有三个苹果，"],
    "chat": ["What is 3 plus 4?", "Tell me a short story about a fox.", "一个星期有几天？"],
}
SAMPLE_TOKENS = 48


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_yaml(path: Path) -> Optional[Any]:
    import yaml  # PyYAML, a dependency of OmegaConf

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix[:-1]: values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def environment(device: Any = None, dtype: Any = None, devices: int = 1) -> dict[str, Any]:
    """Python, torch, the device (and how many trained together), and the git commit of the code when it runs
    from a checkout."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "device": str(device) if device is not None else None,
           "dtype": str(dtype).replace("torch.", "") if dtype is not None else None, "devices": devices,
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if (REPO_DIR / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            env["git_commit"] = commit + (" (uncommitted changes)" if dirty else "") if commit else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return env


def sample_generations(model: Any, tokenizer: Any, chat: bool) -> list[dict[str, str]]:
    """A few greedy replies of `model` (left in the mode it was in)."""
    from zer02llm.evals.scorer import ModelScorer

    was_training = model.training
    try:
        prompts = SAMPLE_PROMPTS["chat" if chat else "pretrain"]
        if chat:
            from zer02llm.data.sft import ChatTemplate

            template = ChatTemplate(tokenizer)
            ids = [template.encode([{"role": "user", "content": p}], add_generation_prompt=True)[0] for p in prompts]
        else:
            ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
        replies = ModelScorer(model).generate(ids, SAMPLE_TOKENS, [tokenizer.eos_id])
        return [{"prompt": p, "reply": tokenizer.decode(r, skip_special=True)} for p, r in zip(prompts, replies)]
    finally:
        model.train(was_training)


def parent_run(run_dir: Path, config: dict) -> Optional[Path]:
    """The run directory mode.init_from points into (a run, or one of its checkpoints), if it is one."""
    init_from = ((config.get("mode") or {}).get("init_from")) if isinstance(config, dict) else None
    if not init_from:
        return None
    path = Path(init_from)
    path = path if path.is_absolute() else (Path.cwd() / path)
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / "config.yaml").is_file() or (candidate / REPORT).is_file():
            return candidate.resolve()
    return path.resolve()


def validation_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics rows that hold validation figures (`val_*`, `<source>/val_*`), in order, reduced to those
    figures and the step; a half-written line (a run still going, or killed) is skipped."""
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in (path.read_text(encoding="utf-8").splitlines() if path.is_file() else []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        figures = {k: v for k, v in row.items() if k.startswith("val_") or "/val_" in k} if isinstance(row, dict) else {}
        if figures:
            rows.append({"step": row.get("step"), **figures})
    return rows


def summarize(run_dir: Path) -> dict[str, Any]:
    """What a report card shows, read from the run directory's files (missing ones leave gaps)."""
    config = read_yaml(run_dir / "config.yaml") or {}
    summary = read_json(run_dir / "summary.json") or {}
    evaluated = read_json(run_dir / "eval_results.json") or {}
    record = read_json(run_dir / RECORD) or {}
    overrides = read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    tasks = {name: {"acc": t["metrics"]["acc"], "chance": t["chance"], "items": t["num_items"],
                    **({"acc_norm": t["metrics"]["acc_norm"]} if "acc_norm" in t["metrics"] else {})}
             for name, t in (evaluated.get("tasks") or {}).items()}
    trained_tasks = {key[len("task/"):]: value for key, value in summary.items() if key.startswith("task/")}
    return {"run_dir": run_dir, "config": config, "summary": summary, "overrides": overrides,
            "environment": record.get("environment") or {}, "samples": record.get("samples") or [],
            "tasks": tasks, "core": evaluated.get("core"), "evaluated_checkpoint": evaluated.get("checkpoint"),
            "trained_tasks": trained_tasks, "parent": parent_run(run_dir, config),
            "validation": validation_rows(run_dir)}


def config_differences(config: dict) -> list[tuple[str, Any, Any]]:
    """(key, value, schema default) for every key whose value is not zer02llm/config.py's default."""
    defaults = flatten(dataclasses.asdict(Config()))
    values = flatten(config)
    if (config.get("model") or {}).get("name") == "moe":
        from zer02llm.config import MoEConfig

        defaults.update(flatten({"model": dataclasses.asdict(MoEConfig())}))
    return [(key, value, defaults.get(key)) for key, value in values.items()
            if key not in defaults or defaults[key] != value]


def model_flops_utilisation(summary: dict, env: dict) -> tuple[Optional[float], str]:
    """(MFU, how it was had) of a run on a GPU whose peak is known; (None, why not) otherwise: "n/a on CPU"."""
    from zer02llm.hardware import MFU_FORMULA, mfu, peak_tflops

    device = str(env.get("device") or "")
    if not device.startswith("cuda"):
        return None, "n/a on CPU" if device.startswith("cpu") else f"n/a on {device or 'an unrecorded device'}"
    known = peak_tflops(env.get("gpu"))
    rate, per_token = summary.get("tokens_per_s"), summary.get("flops_per_token")
    if known is None:
        return None, f"n/a (no peak FLOP/s known for {env.get('gpu') or 'this GPU'})"
    if not isinstance(rate, (int, float)) or not isinstance(per_token, (int, float)):
        return None, "n/a (no tokens/s)"
    devices = int(env.get("devices") or 1)
    return (mfu(rate, per_token, known[1], devices),
            f"{MFU_FORMULA}, peak {known[1]:g} TFLOP/s ({known[0]}, dense bf16) x {devices} device(s)")


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1e5:
            return f"{value:.3e}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]


def render(info: dict[str, Any]) -> str:
    run_dir, config, summary = info["run_dir"], info["config"], info["summary"]
    mode = (config.get("mode") or {}).get("name", summary.get("mode", "?"))
    lines = [f"# Report card: {run_dir.name}", "", f"A **{mode}** run in `{run_dir}`."]
    parent = info["parent"]
    if parent is not None:
        link = os.path.relpath(parent / REPORT, run_dir)
        there = "" if (parent / REPORT).is_file() else " (it has no report.md)"
        lines.append(f"It started from the weights of [{parent.name}]({link}){there} (mode.init_from).")
    env = info["environment"]
    lines += ["", "## Environment", ""]
    lines += table(["python", "torch", "device", "dtype", "git commit", "finished"],
                   [[env.get("python"), env.get("torch"), env.get("gpu") or env.get("device"), env.get("dtype"),
                     env.get("git_commit"), env.get("date")]])
    lines += ["", "## Configuration", ""]
    overrides = [str(o) for o in info["overrides"] if not str(o).startswith("hydra")]
    lines.append("Command line: " + (" ".join(f"`{o}`" for o in overrides) if overrides else
                                     "the defaults of `python -m zer02llm.train`") + ".")
    differences = config_differences(config) if config else []
    if differences:
        lines += ["", "Values that differ from the schema defaults (zer02llm/config.py; presets included):", ""]
        lines += table(["key", "value", "default"], [[k, v, d] for k, v, d in differences])
    data = config.get("data") or {}
    lines += ["", "## Data", ""]
    sources = data.get("mixture") or data.get("train_path") or "the sample corpus (zer02llm/sample_data/)"
    rows = [["training", sources], ["validation", data.get("val_path")], ["sequence length", data.get("seq_len")],
            ["tokens trained", summary.get("tokens")]]
    rows += [[f"tokens from {name}", n] for name, n in (summary.get("source_tokens") or {}).items()]
    lines += table(["", ""], rows)
    lines += ["", "## Model and compute", ""]
    wall = summary.get("wall_seconds")
    utilisation, how = model_flops_utilisation(summary, env)
    lines += table(["parameters", "non-embedding", "active", "FLOPs per token", "FLOPs", "steps", "wall time",
                    "tokens/s", "MFU"],
                   [[summary.get("params"), summary.get("non_embedding_params"), summary.get("active_params"),
                     summary.get("flops_per_token"), summary.get("flops"), summary.get("steps"),
                     f"{wall:.1f} s" if isinstance(wall, (int, float)) else None, summary.get("tokens_per_s"),
                     f"{100 * utilisation:.1f}%" if utilisation is not None else how]])
    if utilisation is not None:
        lines += ["", f"MFU: {how}."]
    lines += ["", "## Results", ""]
    val_loss = summary.get("final_val_loss")
    if mode in ("pretrain", "sft"):  # a next-token loss: perplexity and bits per byte mean something
        ppl = 2.718281828459045 ** val_loss if isinstance(val_loss, (int, float)) and val_loss < 50 else None
        lines += table(["final train loss", "final validation loss", "perplexity", "bits per byte"],
                       [[summary.get("final_loss"), val_loss, ppl, summary.get("final_val_bpb")]])
    else:  # DPO's preference loss, GRPO's -reward: no perplexity
        lines += table(["final train loss", "final validation loss"], [[summary.get("final_loss"), val_loss]])
    validation = info["validation"]
    if validation:
        first, last = validation[0], validation[-1]
        shown = [first, last] if len(validation) > 1 else [last]
        names = [k for k in last if k != "step"] + [k for k in first if k != "step" and k not in last]
        start = " (the starting weights)" if first["step"] == 0 else ""
        lines += ["", "Validation, first and last:" if len(shown) > 1 else "Validation:", ""]
        lines += table(["figure", *(f"step {r['step']}{start if r is first else ''}" for r in shown)],
                       [[name, *(r.get(name) for r in shown)] for name in names])
    lines += ["", "## Task scores", ""]
    if info["tasks"]:
        lines.append(f"`python -m zer02llm.evaluate` on `{info['evaluated_checkpoint']}`:")
        lines.append("")
        lines += table(["task", "items", "acc", "acc_norm", "chance"],
                       [[n, t["items"], t["acc"], t.get("acc_norm"), t["chance"]] for n, t in info["tasks"].items()])
        lines += ["", f"CORE (mean centred accuracy): {fmt(info['core'])}"]
    if info["trained_tasks"]:
        lines += ["", "At the end of training (train.eval_tasks):", ""]
        lines += table(["figure", "value"], [[k, v] for k, v in info["trained_tasks"].items()])
    if not info["tasks"] and not info["trained_tasks"]:
        lines.append("None yet: `python -m zer02llm.evaluate checkpoint=<this run> tasks=[sample]` adds them here.")
    if info["samples"]:
        lines += ["", "## Sample generations (greedy)", ""]
        for sample in info["samples"]:
            reply = sample["reply"].replace("\n", " ⏎ ")
            lines.append(f"- **{sample['prompt']}** → {reply}")
    if (run_dir / "loss.png").is_file():
        lines += ["", "## Loss", "", "![loss curves](loss.png)"]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, model: Any = None, tokenizer: Any = None, device: Any = None,
                 dtype: Any = None, devices: int = 1) -> Path:
    """Write run_dir/report.md. The trainer's call gives the device (the environment is recorded in report.json
    first) and the model (a few greedy generations too; None for a sharded model, which rank 0 cannot run alone)."""
    run_dir = Path(run_dir)
    if device is not None:
        config = read_yaml(run_dir / "config.yaml") or {}
        chat = (config.get("mode") or {}).get("name") in CHAT_MODES
        record = {"environment": environment(device, dtype, devices),
                  "samples": sample_generations(model, tokenizer, chat) if model is not None else []}
        (run_dir / RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    path = run_dir / REPORT
    path.write_text(render(summarize(run_dir)), encoding="utf-8")
    return path


def compare_reports(run_dirs: list[Path]) -> str:
    """A Markdown table with a column per run: what each was, what it cost, how it scored."""
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"compare=[..., {run_dir}, ...]: no such run directory")
    infos = [summarize(run_dir) for run_dir in run_dirs]
    rows: list[list[Any]] = []

    def row(name: str, get) -> None:
        rows.append([name] + [get(info) for info in infos])

    row("mode", lambda i: (i["config"].get("mode") or {}).get("name"))
    row("started from", lambda i: i["parent"].name if i["parent"] else None)
    row("parameters", lambda i: i["summary"].get("params"))
    row("steps", lambda i: i["summary"].get("steps"))
    row("tokens", lambda i: i["summary"].get("tokens"))
    row("FLOPs", lambda i: i["summary"].get("flops"))
    row("wall seconds", lambda i: i["summary"].get("wall_seconds"))
    row("tokens/s", lambda i: i["summary"].get("tokens_per_s"))
    row("final train loss", lambda i: i["summary"].get("final_loss"))
    row("final val loss", lambda i: i["summary"].get("final_val_loss"))
    row("val bits per byte", lambda i: i["summary"].get("final_val_bpb"))
    for name in dict.fromkeys(n for info in infos for n in info["tasks"]):
        row(f"{name} acc", lambda i, n=name: (i["tasks"].get(n) or {}).get("acc"))
    row("CORE", lambda i: i["core"])
    header = ["run"] + [info["run_dir"].name or str(info["run_dir"]) for info in infos]
    return "\n".join(table(header, rows))
