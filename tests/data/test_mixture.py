"""The weighted mixture: proportions, determinism, exact resume, 1 vs 2 ranks, per-source tokens, config errors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from zer02llm.config import ConfigError, DataConfig
from zer02llm.training.preflight import validate_run
from zer02llm.data.inputs import pretrain_data
from zer02llm.data.mixture import ConcatDataset, MixtureDataset, largest_remainder
from zer02llm.data.sampler import BatchSampler
from zer02llm.data.spec import load_mixture, mixture_problems
from zer02llm.tokenizer import Tokenizer

from conftest import REPO, compose

SEQ = 8
BASE = 10**6


class Windows:
    """A fake source: window j of source s is the row [s * BASE + j] * (SEQ + 1), so a batch says where it came from."""

    fixed_targets = True
    seq_len = SEQ

    def __init__(self, source: int, n: int):
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def batch(self, indices):
        ids = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        rows = (self.source * BASE + ids)[:, None].expand(-1, SEQ + 1)
        return rows[:, :-1], rows[:, 1:]


def mixture(sizes=(300, 50, 650), weights=(0.5, 0.3, 0.2), seed=7) -> MixtureDataset:
    names = ["web", "books", "code"]
    return MixtureDataset({n: Windows(s, k) for s, (n, k) in enumerate(zip(names, sizes))},
                          dict(zip(names, weights)), seed)


def sources_of(data, indices) -> list[int]:
    return (data.batch(indices)[0][:, 0] // BASE).tolist()


def test_epoch_allocation_is_exact_and_repeats_or_subsamples():
    data = mixture()
    assert len(data) == 1000  # an epoch: the windows of all sources together
    assert data.draws.tolist() == [500, 300, 200]
    # books (50 windows, 300 draws) repeats 6 times, each of its windows exactly 6 times
    books = data.window_of[data.source_of == 1]
    assert Counter(books.tolist()) == {j: 6 for j in range(50)}
    # code (650 windows, 200 draws) contributes 200 distinct windows, not just its first ones
    code = data.window_of[data.source_of == 2]
    assert len(set(code.tolist())) == 200 and code.max() > 400


def test_largest_remainder_matches_a_naive_rounding():
    for total, weights in [(10, [1, 1, 1]), (7, [0.5, 0.25, 0.25]), (1001, [3, 0, 1])]:
        counts = largest_remainder(total, weights)
        assert counts.sum() == total
        exact = total * np.array(weights) / sum(weights)
        assert np.all(np.abs(counts - exact) < 1)
    # which remainders win, worked by hand: 4.92, 3.96, 3.12 floor to 4, 3, 3; the two left over go to the
    # largest remainders (.96, then .92), not to the smallest source nor in source order
    assert largest_remainder(12, [0.41, 0.33, 0.26]).tolist() == [5, 4, 3]
    # 1.4, 3.6, 5.0: the one left over goes to .6
    assert largest_remainder(10, [0.14, 0.36, 0.5]).tolist() == [1, 4, 5]


def test_sampled_proportions_follow_the_weights_within_tolerance():
    # 200 batches of 16 = 3200 windows of a 30000-window epoch: the standard deviation of a share is
    # <= sqrt(0.25 / 3200) ~ 0.009, so 0.04 is over 4 sigma
    data = mixture(sizes=(20000, 3000, 7000), weights=(0.6, 0.3, 0.1))
    sampler = BatchSampler(len(data), 16, seed=3)
    seen = Counter()
    for _ in range(200):
        seen.update(sources_of(data, sampler.next_batch()))
    total = sum(seen.values())
    for s, w in enumerate((0.6, 0.3, 0.1)):
        assert abs(seen[s] / total - w) < 0.04


def test_deterministic_per_seed_and_different_across_seeds():
    a, b, c = mixture(seed=1), mixture(seed=1), mixture(seed=2)
    assert np.array_equal(a.window_of, b.window_of) and np.array_equal(a.source_of, b.source_of)
    assert not np.array_equal(a.window_of, c.window_of)


def test_resume_continues_exactly():
    data = mixture()
    sampler = BatchSampler(len(data), 8, seed=5)
    straight = [data.batch(sampler.next_batch())[0] for _ in range(200)]  # crosses epoch boundaries
    first = BatchSampler(len(data), 8, seed=5)
    for _ in range(77):
        first.next_batch()
    resumed = BatchSampler(len(data), 8, seed=5)
    resumed.load_state_dict(first.state_dict())
    rebuilt = mixture()  # a new process builds the mixture again from the same seed
    for k in range(77, 200):
        assert torch.equal(rebuilt.batch(resumed.next_batch())[0], straight[k])


def test_two_ranks_read_what_one_rank_reads():
    data = mixture()
    one = BatchSampler(len(data), 8, seed=5)
    ranks = [BatchSampler(len(data), 4, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(300):
        whole = data.batch(one.next_batch())[0]
        parts = torch.cat([data.batch(s.next_batch())[0] for s in ranks])
        assert torch.equal(whole, parts)


def test_source_tokens_counts_targets_per_source():
    data = mixture()
    indices = list(range(0, 1000, 3))
    expected = Counter(sources_of(data, indices))
    names = ["web", "books", "code"]
    assert data.source_tokens(indices) == {names[s]: expected[s] * SEQ for s in range(3)}
    # the trainer hands in the batch it built: the same counts, without building it again
    assert data.source_tokens(indices, data.batch(indices)[1]) == data.source_tokens(indices)


def test_concat_pads_rows_of_different_widths():
    class Short(Windows):
        fixed_targets = False

        def batch(self, indices):
            x, y = super().batch(indices)
            return x[:, :3], y[:, :3]

    data = ConcatDataset([Windows(0, 4), Short(1, 4)], pad_values=(0, -100))
    inputs, targets = data.batch([5, 0, 7])
    assert inputs.shape == (3, SEQ) and not data.fixed_targets
    assert inputs[0].tolist() == [BASE + 1] * 3 + [0] * (SEQ - 3) and targets[0, 3:].tolist() == [-100] * (SEQ - 3)
    assert inputs[1].tolist() == [0] * SEQ and inputs[2, 0] == BASE + 3


# --- config and real files --------------------------------------------------------------------------

def write_corpus(path, n, word):
    path.write_text("".join(json.dumps({"text": f"{word} {i} " * 30}) + "\n" for i in range(n)))
    return str(path)


def test_pretrain_data_mixture_with_per_source_validation(tmp_path):
    tokenizer = Tokenizer.load()
    web, books = write_corpus(tmp_path / "web.jsonl", 60, "web"), write_corpus(tmp_path / "books.jsonl", 10, "book")
    val = write_corpus(tmp_path / "books_val.jsonl", 5, "bookval")
    data = DataConfig(mixture={"web": {"path": web, "weight": 0.7}, "books": {"path": books, "weight": 0.3,
                                                                                "val_path": val}},
                      val_path=None, seq_len=16, cache_dir=str(tmp_path / "cache"))
    train, vals = pretrain_data(data, tokenizer, seed=0)
    assert isinstance(train, MixtureDataset) and list(vals) == ["books"]
    counts = train.source_tokens(list(range(len(train))))
    assert abs(counts["books"] / sum(counts.values()) - 0.3) < 1 / len(train) + 1e-9


def write_conversations(path, n, word):
    path.write_text("".join(json.dumps({"conversations": [{"role": "user", "content": f"{word} {i}?"},
                                                          {"role": "assistant", "content": f"{word} answer {i}."}]})
                            + "\n" for i in range(n)))
    return str(path)


def test_sft_data_mixture_draws_by_weight_and_validates_per_source(tmp_path):
    """mode=sft with data.mixture: 20 + 20 conversations at weights 3:1 give an epoch of 30 + 10 (not 20 + 20,
    as drawing by size would), and a source's val_path is its own validation set."""
    from zer02llm.data.inputs import sft_data

    tokenizer = Tokenizer.load()
    web, books = (write_conversations(tmp_path / "web.jsonl", 20, "web"),
                  write_conversations(tmp_path / "books.jsonl", 20, "book"))
    val = write_conversations(tmp_path / "books_val.jsonl", 4, "bookval")
    data = DataConfig(mixture={"web": {"path": web, "weight": 3}, "books": {"path": books, "weight": 1,
                                                                              "val_path": val}},
                      val_path=None, seq_len=64, cache_dir=str(tmp_path / "cache"))
    train, vals = sft_data(data, tokenizer, seed=0)
    assert isinstance(train, MixtureDataset) and len(train) == 40 and train.draws.tolist() == [30, 10]
    assert list(vals) == ["books"] and len(vals["books"]) == 4
    everything = list(range(len(train)))
    _, targets = train.batch(everything)
    counts = train.source_tokens(everything, targets)
    assert sum(counts.values()) == int((targets != -100).sum())  # the supervised tokens, each counted once
    inputs = train.batch(everything)[0]
    books_rows = [i for i in everything if train.locate([i])[0][0] == train.names.index("books")]
    assert len(books_rows) == 10
    book_word = tokenizer.encode("book")[0]
    assert all(book_word in inputs[i].tolist() for i in books_rows)  # the rows drawn from books are books'


def test_example_mixture_file_loads_and_works_as_a_path(tmp_path):
    example = REPO / "conf" / "data" / "mixture_example.yaml"
    sources = load_mixture(str(example))
    assert sum(s.weight for s in sources.values()) > 0 and all(s.path for s in sources.values())
    # the same file is a Hydra option too: +data=mixture_example sets data.mixture to its mapping
    composed = OmegaConf.to_object(compose(["+data=mixture_example"])).data.mixture
    assert load_mixture(composed) == sources


@pytest.mark.parametrize("mixture, pattern", [
    ({"web": {"path": "x", "weight": -1}}, r"data.mixture.web.weight=-1: must be >= 0"),
    ({"web": {"path": "x", "weight": 0}, "books": {"path": "y", "weight": 0}},
     r"data.mixture: all weights are 0 \(web, books\)"),
    ({"web": {"weight": 1}}, r"data.mixture.web.path is missing"),
    ({"web": {"path": "x", "wieght": 1}}, r"data.mixture.web.wieght: no such setting of a mixture source"),
    ({"web": {"path": "/no/such/dir", "weight": 1}}, r"data.mixture.web.path=/no/such/dir: no such file"),
    ("/no/such/mixture.yaml", r"data.mixture=/no/such/mixture.yaml: no such YAML file"),
], ids=["negative", "all-zero", "no-path", "typo", "missing-source", "missing-file"])
def test_bad_mixtures_are_config_errors_naming_the_key(mixture, pattern):
    cfg = OmegaConf.to_object(compose([]))
    cfg.data.mixture = mixture
    with pytest.raises(ConfigError, match=pattern):
        validate_run(cfg)


def test_mixture_with_train_path_is_refused(tmp_path):
    cfg = OmegaConf.to_object(compose([]))
    cfg.data.mixture = {"web": {"path": write_corpus(tmp_path / "w.jsonl", 3, "w"), "weight": 1}}
    cfg.data.train_path = cfg.data.mixture["web"]["path"]
    with pytest.raises(ConfigError, match=r"data.mixture and data.train_path=.* are both set"):
        validate_run(cfg)


def test_mixture_from_the_command_line_composes(tmp_path):
    web = write_corpus(tmp_path / "w.jsonl", 3, "w")
    cfg = OmegaConf.to_object(compose([f"data.mixture={{web: {{path: '{web}', weight: 0.7}}}}",
                                       f"data.train_path=['{web}','{web}']"]))
    assert cfg.data.mixture == {"web": {"path": web, "weight": 0.7}} and cfg.data.train_path == [web, web]
    assert "are both set" in mixture_problems(cfg.data, "pretrain")[0]


# --- through the training command ------------------------------------------------------------------

@pytest.mark.slow
def test_training_on_a_mixture_logs_each_sources_tokens_and_validation(tmp_path):
    """The real command: a 3:1 mixture trains, each source's tokens seen add up to the run's tokens in the
    weights' proportions, the source with a val file is validated under its name, and the summary has it."""
    from conftest import TINY, read_metrics, run_module

    web, books = write_corpus(tmp_path / "web.jsonl", 40, "web"), write_corpus(tmp_path / "books.jsonl", 8, "book")
    val = write_corpus(tmp_path / "books_val.jsonl", 4, "bookval")
    mixture = f"{{web: {{path: '{web}', weight: 3}}, books: {{path: '{books}', weight: 1, val_path: '{val}'}}}}"
    run_module("zer02llm.train", [*TINY, f"data.mixture={mixture}", "data.val_path=null", "train.max_steps=20",
                                  "hydra.run.dir=run"], cwd=tmp_path)
    rows = read_metrics(tmp_path / "run")
    last = [r for r in rows if "loss" in r][-1]
    assert last["step"] == 20 and last["web/tokens"] + last["books/tokens"] == last["tokens"] == 20 * 4 * 32
    # exactly: the epoch draws 3:1 (worked by hand from its size, not by the sources' sizes), and the run's
    # books tokens are the books windows among the 80 samples its sampler gave (seed 1337, batches of 4)
    data = DataConfig(mixture={"web": {"path": web, "weight": 3}, "books": {"path": books, "weight": 1}},
                      val_path=None, seq_len=32)
    train, _ = pretrain_data(data, Tokenizer.load(), seed=1337)
    n = len(train)
    assert train.draws.tolist() == [round(3 * n / 4), n - round(3 * n / 4)]
    sampler = BatchSampler(n, 4, seed=1337)
    drawn = [i for _ in range(20) for i in sampler.next_batch()]
    books_windows = int((train.locate(drawn)[0] == train.names.index("books")).sum())
    assert last["books/tokens"] == books_windows * 32
    evals = [r for r in rows if any(k.endswith("val_loss") for k in r)]
    assert evals and all("books/val_loss" in r and "books/val_bpb" in r and "val_loss" not in r for r in evals)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["source_tokens"] == {"web": last["web/tokens"], "books": last["books/tokens"]}


@pytest.mark.slow
def test_a_list_of_files_on_the_command_line_trains_on_both(tmp_path):
    from conftest import TINY, run_module

    first, second = write_corpus(tmp_path / "a b.jsonl", 6, "alpha"), write_corpus(tmp_path / "c.jsonl", 6, "beta")
    result = run_module("zer02llm.train", [*TINY, f"data.train_path=[{first},{second}]", "data.val_path=null",
                                           "train.max_steps=2", "hydra.run.dir=run"], cwd=tmp_path)
    # as many windows as the two files give alone (each its own cache entry, concatenated)
    alone = [len(pretrain_data(DataConfig(train_path=path, val_path=None, seq_len=32, cache_dir=str(tmp_path / "c")),
                               Tokenizer.load(), seed=0)[0]) for path in (first, second)]
    log = result.stdout + result.stderr
    assert f"{sum(alone)} training sequences" in log, log[-2000:]


def test_a_mixture_for_dpo_is_refused_before_any_work(tmp_path):
    cfg = OmegaConf.to_object(compose(["mode=dpo", f"mode.init_from={tmp_path}"]))
    cfg.data.mixture = {"web": {"path": write_corpus(tmp_path / "w.jsonl", 3, "w"), "weight": 1}}
    with pytest.raises(ConfigError, match=r"data.mixture is for mode=pretrain and mode=sft, not mode=dpo"):
        validate_run(cfg, check_files=False)
