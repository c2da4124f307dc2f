"""The lm-evaluation-harness model: on a local YAML task its per-item log-likelihoods equal our own evaluate's and
lm-eval's `hf` model's on the exported checkpoint (with add_bos_token=True), and so do the accuracies."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize, write_jsonl
from zer02llm.checkpoint import export_model
from zer02llm.config import ExportConfig, ModelConfig
from zer02llm.evals.runner import TaskRunner
from zer02llm.evals.scorer import ModelScorer
from zer02llm.evals.tasks import load_tasks
from zer02llm.model import Transformer
from zer02llm.resources import shipped_path
from zer02llm.tokenizer import Tokenizer

try:
    import lm_eval
except ImportError:  # skipped test by test, not the module, so that `pytest -m gpu` reports only GPU tests
    lm_eval = None
pytestmark = pytest.mark.skipif(lm_eval is None, reason="lm-eval is not installed (pip install 'zer02llm[evals]')")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's data is a local file; nothing to fetch

ITEMS = [
    {"context": "Grass is", "choices": ["green", "red", "blue"], "answer": 0},
    {"context": "Snow is", "choices": ["black", "white"], "answer": 1},
    {"context": "On a clear day, the sky is", "choices": ["blue", "brown", "orange", "pink"], "answer": 0},
    {"context": "Red and blue make", "choices": ["purple", "grey"], "answer": 0},
    {"context": "A dog says", "choices": ["woof", "meow", "moo"], "answer": 0},
    {"context": "Each duck has", "choices": ["two legs", "four legs", "eight legs"], "answer": 0},
]
TASK_YAML = """\
task: zer02llm_test_colours
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256)
    model = randomize(Transformer(cfg), seed=5).eval()
    export_model(root / "model", model, {"model": dataclasses.asdict(cfg), "mode": "pretrain"},
                 shipped_path("tokenizer"))
    items = write_jsonl(root / "colours.jsonl", ITEMS)
    (root / "tasks").mkdir()
    (root / "tasks" / "colours.yaml").write_text(TASK_YAML.format(path=items))
    return root, model


def evaluate(model: str, model_args: str, root, tasks=("zer02llm_test_colours",)) -> dict:
    import zer02llm.evals.lm_eval_model  # noqa: F401 - registers the zer02llm model
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(tasks), log_samples=True,
                                   task_manager=TaskManager(include_path=str(root / "tasks")),
                                   bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)


def per_item(results: dict, task: str = "zer02llm_test_colours") -> list[list[float]]:
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples]


def test_log_likelihoods_and_accuracies_equal_ours_and_hf_on_the_export(setup):
    root, model = setup
    ours = TaskRunner(ModelScorer(model), Tokenizer.load(), shown=None).run(
        load_tasks(str(root / "colours.jsonl"))[0])
    ours_items = [e["logprobs"] for e in ours.examples]
    mine = evaluate("zer02llm", f"checkpoint={root / 'model'},device=cpu", root)
    from zer02llm import export

    export.run(ExportConfig(checkpoint=str(root / "model"), output=str(root / "hf")))
    hf = evaluate("hf", f"pretrained={root / 'hf'},add_bos_token=True,dtype=float32,device=cpu", root)

    for name, results in (("zer02llm", mine), ("hf", hf)):
        got = per_item(results)
        assert len(got) == len(ours_items) == len(ITEMS)
        for item_got, item_ours in zip(got, ours_items):
            assert item_got == pytest.approx(item_ours, abs=1e-5), name
        metrics = results["results"]["zer02llm_test_colours"]
        assert metrics["acc,none"] == pytest.approx(ours.metrics["acc"]), name
        assert metrics["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"]), name


def test_rolling_log_likelihood_scores_a_texts_tokens_after_bos(setup):
    import zer02llm.evals.lm_eval_model as harness
    from lm_eval.api.instance import Instance

    root, model = setup
    text = "Today is Monday. Tomorrow will be Tuesday, and the day after will be Wednesday."
    tokenizer = Tokenizer.load()
    ids = [tokenizer.bos_id] + tokenizer.encode(text)
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    expected = sum(float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1))
    request = Instance("loglikelihood_rolling", {}, (text,), 0)
    whole = harness.Zer02LLM(checkpoint=str(root / "model"), device="cpu")
    assert whole.loglikelihood_rolling([request])[0] == pytest.approx(expected, abs=1e-4)
    # in windows of 8 tokens every token is still scored once, each with less context
    windowed = harness.Zer02LLM(checkpoint=str(root / "model"), device="cpu", max_length=8)
    assert windowed.loglikelihood_rolling([request])[0] != pytest.approx(expected, abs=1e-4)


def test_generate_until_stops_at_the_until_strings(setup):
    import zer02llm.evals.lm_eval_model as harness
    from lm_eval.api.instance import Instance

    root, model = setup
    lm = harness.Zer02LLM(checkpoint=str(root / "model"), device="cpu")
    free = lm.generate_until([Instance("generate_until", {}, ("Today is", {"until": [], "max_gen_toks": 12}), 0)])[0]
    assert free  # a random model says something
    stop = free[len(free) // 2:len(free) // 2 + 1]
    cut = lm.generate_until([Instance("generate_until", {}, ("Today is", {"until": [stop], "max_gen_toks": 12}), 0)])
    assert cut[0] == free[:free.index(stop)]

    # requests that stop alike are generated together, others apart: each reply as it is alone, in order
    def request(context, until, n):
        return Instance("generate_until", {}, (context, {"until": until, "max_gen_toks": n}), 0)

    mixed = [request("Today is", [stop], 12), request("小明有", [], 6), request("There are", [stop], 12),
             request("Today is", [], 12)]
    assert lm.generate_until(mixed) == [lm.generate_until([r])[0] for r in mixed]
    assert lm.generate_until(mixed)[3] == free


def test_model_args_win_over_lm_evals_device_default(setup):
    """lm-eval's command line passes device=cuda:0 unless told otherwise; model_args' device=cpu is no clash."""
    import zer02llm.evals.lm_eval_model as harness

    root, _ = setup
    lm = harness.Zer02LLM.create_from_arg_string(f"checkpoint={root / 'model'},device=cpu",
                                                 {"device": "cuda:0", "batch_size": 1})
    assert lm.loaded.model.tok_embeddings.weight.device.type == "cpu"


def test_a_chat_render_keeps_its_own_bos(setup):
    """--apply_chat_template: the checkpoint's template; its render begins with bos, which is not doubled."""
    import zer02llm.evals.lm_eval_model as harness

    root, _ = setup
    lm = harness.Zer02LLM(checkpoint=str(root / "model"), device="cpu")
    text = lm.apply_chat_template([{"role": "user", "content": "What is 3 plus 4?"}])
    assert text == "<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\n"
    tokenizer = Tokenizer.load()
    assert lm.context_ids(text) == tokenizer.encode(text) and lm.context_ids(text)[0] == tokenizer.bos_id
    context, continuation = lm.encode(text, "3 plus 4 is 7.")
    assert context + continuation == tokenizer.encode(text + "3 plus 4 is 7.")
    assert lm.context_ids("Today is") == [tokenizer.bos_id] + tokenizer.encode("Today is")
