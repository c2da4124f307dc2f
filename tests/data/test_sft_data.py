"""SFT data: record parsing, the chat template's supervision mask, next-token labels, the cache, batches.

Expected ids and masks are spelled out from the shipped ChatML template by hand: bos/eos ids around
`role\\ncontent`, tokenized piece by piece with the plain tokenizer, never by the code under test.
"""

from __future__ import annotations

import gzip
import json
import logging
import re

import numpy as np
import pytest
import torch

from zer02llm.data.jsonl import BadLine, BadLines, DataError
from zer02llm.data.sources import iter_records
from zer02llm.data.sft import (ChatTemplate, SFTDataset, TemplateError, parse_sft, tokenize_sft_to_cache)
from zer02llm.model.transformer import IGNORE_INDEX
from zer02llm.tokenizer import Tokenizer

from conftest import SHARED_DATA, write_jsonl

IGN = IGNORE_INDEX
BOS, EOS, PAD = 1, 2, 0  # the shipped tokenizer's <|im_start|>, <|im_end|>, <|endoftext|>


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    tokenizer = Tokenizer.load()
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (BOS, EOS, PAD)
    return tokenizer


@pytest.fixture(scope="module")
def chat(tok) -> ChatTemplate:
    return ChatTemplate(tok)


def with_template(tok: Tokenizer, template: str | None) -> Tokenizer:
    config = {k: v for k, v in tok.config.items() if k != "chat_template"}
    if template is not None:
        config["chat_template"] = template
    return Tokenizer(tok.path, (tok.path / "tokenizer.json").read_bytes(), config)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


class Expect:
    """Hand-built ChatML token ids and supervised flags, appended piece by piece."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.ids, self.sup = tok, [], []

    def add(self, ids: list[int], supervised: bool) -> "Expect":
        self.ids += ids
        self.sup += [supervised] * len(ids)
        return self

    def prompt_turn(self, role: str, content: str) -> "Expect":
        # <|im_start|>role\ncontent<|im_end|>\n, all unsupervised
        return self.add([BOS] + self.tok.encode(f"{role}\n{content}") + [EOS] + self.tok.encode("\n"), False)

    def answer_turn(self, content: str) -> "Expect":
        # header unsupervised; the content and its <|im_end|> supervised; the newline after it not
        self.add([BOS] + self.tok.encode("assistant\n"), False)
        self.add(self.tok.encode(content) + [EOS], True)
        return self.add(self.tok.encode("\n"), False)


# --- parsing ----------------------------------------------------------------------------------


def test_parse_keeps_roles_and_content_from_the_data():
    obj = {"conversations": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                             {"role": "user", "content": "Still there?", "extra": 1},
                             {"role": "assistant", "content": "Yes."}], "source": "x"}
    assert parse_sft(obj) == [system("Be brief."), user("Hi"), user("Still there?"), assistant("Yes.")]


@pytest.mark.parametrize("obj, reason", [
    ([1, 2], "expected a JSON object, got list"),
    ({"text": "pretraining line"}, 'missing "conversations"'),
    ({"conversations": "hi"}, '"conversations" is a str, not a list'),
    ({"conversations": []}, 'empty "conversations"'),
    ({"conversations": [user("q"), "a"]}, "turn 2 is a str, not an object"),
    ({"conversations": [user("q"), {"role": "bot", "content": "a"}]}, 'unknown role "bot" in turn 2'),
    ({"conversations": [user("q"), {"content": "a"}]}, 'missing "role" in turn 2'),
    ({"conversations": [user("q"), {"role": "assistant"}]}, 'missing "content" in turn 2'),
    ({"conversations": [user("q"), {"role": "assistant", "content": 5}]}, "content of turn 2 is a int"),
    ({"conversations": [user("q"), assistant("a"), user(" \n")]}, "empty content in turn 3"),
    ({"conversations": [user("q"), system("s"), assistant("a")]}, "system turn 2 is not the first turn"),
    ({"conversations": [system("s"), user("q")]}, "no assistant turn"),
    ({"conversations": [user("q\ud800"), assistant("a")]}, "content of turn 1 is not valid Unicode"),
])
def test_parse_rejects_with_a_reason(obj, reason):
    with pytest.raises(BadLine) as info:
        parse_sft(obj)
    assert str(info.value).startswith(reason)


# --- the chat template and the mask ------------------------------------------------------------


def test_single_turn_mask_token_by_token(tok, chat):
    messages = [user("What is 2+2?"), assistant("It is 4.")]
    ids, sup = chat.encode(messages)
    expected = Expect(tok).prompt_turn("user", "What is 2+2?").answer_turn("It is 4.")
    assert (ids, sup) == (expected.ids, expected.sup)
    # spelled out: exactly "It is 4." and <|im_end|> are supervised, the final newline is not
    assert tok.decode([i for i, s in zip(ids, sup) if s]) == "It is 4.<|im_end|>"
    assert ids[-2:] == [EOS] + tok.encode("\n") and sup[-2:] == [True, False]
    assert tok.decode(ids) == chat.render(messages)


def test_system_turn_is_not_supervised(tok, chat):
    messages = [system("You are terse."), user("你好"), assistant("你好！")]
    ids, sup = chat.encode(messages)
    expected = Expect(tok).prompt_turn("system", "You are terse.").prompt_turn("user", "你好").answer_turn("你好！")
    assert (ids, sup) == (expected.ids, expected.sup)
    assert ids[0] == BOS and not any(sup[:sup.index(True)])


def test_multi_turn_supervises_every_answer(tok, chat):
    messages = [user("Name a colour."), assistant("Blue."), user("Another?"), assistant("Green, then red.")]
    ids, sup = chat.encode(messages)
    expected = (Expect(tok).prompt_turn("user", "Name a colour.").answer_turn("Blue.")
                .prompt_turn("user", "Another?").answer_turn("Green, then red."))
    assert (ids, sup) == (expected.ids, expected.sup)
    assert tok.decode([i for i, s in zip(ids, sup) if s]) == "Blue.<|im_end|>Green, then red.<|im_end|>"


def test_generation_prompt_appends_an_unsupervised_header(tok, chat):
    messages = [user("Hi")]
    ids, sup = chat.encode(messages, add_generation_prompt=True)
    assert ids == [BOS] + tok.encode("user\nHi") + [EOS] + tok.encode("\n") + [BOS] + tok.encode("assistant\n")
    assert not any(sup)
    assert chat.render(messages, add_generation_prompt=True) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_matches_transformers_apply_chat_template(tok, chat):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tok.path))
    conversations = [
        [user("What is 2+2?"), assistant("It is 4.")],
        [system("You are terse."), user("你好"), assistant("你好！")],
        [user("Name a colour."), assistant("Blue."), user("Another?"), assistant("Green,\n\nthen red.")],
        [user("  leading spaces"), assistant("answer with trailing spaces  "), user("emoji 😀")],
    ]
    for messages in conversations:
        for generation in (False, True):
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            assert chat.render(messages, add_generation_prompt=generation) == text
            # piecewise tokenization gives the same ids as tokenizing the whole render at once
            assert chat.encode(messages, add_generation_prompt=generation)[0] == tok.encode(text)


def test_answer_opening_with_newlines_is_tokenized_apart_from_its_header(tok, chat):
    # The one place piecewise ids differ from tokenizing the whole render: an answer that opens with
    # whitespace the pre-tokenizer would join to the header's newline. As a whole, "assistant\n" +
    # "\n\nanswer" makes the run "\n\n\n" -> "\n\n" + "\n" (one token straddling header and answer);
    # piece by piece the header keeps its own "\n" token and the answer starts with its own, as it
    # must at generation time, where the prompt ends with the header.
    messages = [user("Hi"), assistant("\n\nanswer")]
    ids, sup = chat.encode(messages)
    nl, nl2 = tok.encode("\n"), tok.encode("\n\n")
    assert len(nl) == 1 and len(nl2) == 1  # both are single tokens of the vocabulary
    header = [BOS] + tok.encode("user\nHi") + [EOS] + nl + [BOS] + tok.encode("assistant\n")
    assert ids == header + tok.encode("\n\nanswer") + [EOS] + nl
    assert sup == [False] * len(header) + [True] * (len(ids) - len(header) - 1) + [False]
    whole = tok.encode(chat.render(messages))
    assert whole[:len(header) - 1] == header[:-1] and whole[len(header) - 1] == nl2[0] and whole != ids
    assert tok.decode(whole) == tok.decode(ids)


def test_missing_chat_template_is_a_clear_error(tok):
    with pytest.raises(TemplateError, match="has no chat template.*tokenizer_config.json"):
        ChatTemplate(with_template(tok, None))


def test_boundaries_come_from_the_template_not_from_chatml(tok):
    # a Llama-2-like layout: no role headers, no generation prompt, eos right after each answer
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
    chat = ChatTemplate(with_template(tok, template))
    messages = [user("Hi"), assistant("Hello."), user("Bye"), assistant("Bye!")]
    assert chat.segments(messages) == [("<|im_start|>[INST] Hi [/INST]", False), (" Hello.<|im_end|>", True),
                                       ("[INST] Bye [/INST]", False), (" Bye!<|im_end|>", True)]
    ids, sup = chat.encode(messages)
    assert ids == ([BOS] + tok.encode("[INST] Hi [/INST]") + tok.encode(" Hello.") + [EOS]
                   + tok.encode("[INST] Bye [/INST]") + tok.encode(" Bye!") + [EOS])
    assert tok.decode([i for i, s in zip(ids, sup) if s]) == " Hello.<|im_end|> Bye!<|im_end|>"


@pytest.mark.parametrize("template, message", [
    ("{{ messages | length }}{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}", "not prefix-stable"),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", "does not end assistant turn 2 with the eos token"),
    ("{{ messages.append(1) }}", "unsafe"),  # the sandbox refuses to let a template mutate its input
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
])
def test_unusable_templates_are_refused(tok, template, message):
    with pytest.raises(TemplateError, match=message):
        ChatTemplate(with_template(tok, template)).encode([user("q"), assistant("a")])


# --- labels and samples ------------------------------------------------------------------------


def dataset(tmp_path, tok, conversations, seq_len, name="data.jsonl"):
    path = write_jsonl(tmp_path / name, [{"conversations": c} for c in conversations])
    return SFTDataset(tokenize_sft_to_cache(path, tok, tmp_path / "cache", progress=False), seq_len, tok.pad_id)


def test_first_answer_token_is_a_target_and_the_token_after_eos_is_not(tmp_path, tok):
    data = dataset(tmp_path, tok, [[user("What is 2+2?"), assistant("It is 4.")]], seq_len=64)
    inputs, targets = data.batch([0])
    prompt = [BOS] + tok.encode("user\nWhat is 2+2?") + [EOS] + tok.encode("\n") + [BOS] + tok.encode("assistant\n")
    answer = tok.encode("It is 4.")
    full = prompt + answer + [EOS] + tok.encode("\n")
    assert inputs[0].tolist() == full[:-1]
    assert targets[0].tolist() == [IGN] * (len(prompt) - 1) + answer + [EOS] + [IGN]
    # the header's last token predicts the first answer token; <|im_end|> predicts nothing
    assert inputs[0, len(prompt) - 1].item() == tok.encode("\n")[-1] and targets[0, len(prompt) - 1] == answer[0]
    assert inputs[0, -1].item() == EOS and targets[0, -1] == IGN


def test_truncation_inside_the_second_answer(tmp_path, tok):
    conversation = [user("Name a colour."), assistant("Blue."), user("Another?"),
                    assistant("Green, and then a long list of further colours.")]
    p1 = [BOS] + tok.encode("user\nName a colour.") + [EOS] + tok.encode("\n") + [BOS] + tok.encode("assistant\n")
    a1 = tok.encode("Blue.")
    p2 = tok.encode("\n") + [BOS] + tok.encode("user\nAnother?") + [EOS] + tok.encode("\n") + [BOS] \
        + tok.encode("assistant\n")
    a2 = tok.encode("Green, and then a long list of further colours.")
    k = 3  # answer tokens of the second answer inside the window
    seq_len = len(p1) + len(a1) + len(p2) + k
    data = dataset(tmp_path, tok, [conversation], seq_len)
    inputs, targets = data.batch([0])
    assert inputs.shape == (1, seq_len) and data.truncated == 1
    assert inputs[0].tolist() == (p1 + a1 + [EOS] + p2 + a2)[:seq_len]
    assert targets[0].tolist() == [IGN] * (len(p1) - 1) + a1 + [EOS] + [IGN] * len(p2) + a2[:k]


def test_window_without_a_target_is_skipped_and_counted(tmp_path, tok, caplog):
    long_prompt = [user("word " * 60), assistant("ok")]
    short = [user("Hi"), assistant("Hello.")]
    prompt_len = len([BOS] + tok.encode("user\n" + "word " * 60) + [EOS] + tok.encode("\n") + [BOS]
                     + tok.encode("assistant\n"))
    # the window of seq_len + 1 = prompt_len tokens ends right after the header: nothing to predict
    with caplog.at_level(logging.WARNING):
        data = dataset(tmp_path, tok, [short, long_prompt, short], seq_len=prompt_len - 1)
    assert (len(data), data.skipped_no_target) == (2, 1)
    # named by the data file the user gave, not by the cache file
    assert f"{tmp_path / 'data.jsonl'}: skipped 1 of 3 conversation(s) with no supervised target" in caplog.text
    assert ".bin" not in caplog.text
    # one token more and the first answer token is the only target: the sample is kept
    data = dataset(tmp_path, tok, [long_prompt], seq_len=prompt_len)
    assert (len(data), data.skipped_no_target) == (1, 0)
    inputs, targets = data.batch([0])
    assert targets[0].tolist() == [IGN] * (prompt_len - 1) + tok.encode("ok")[:1]
    data_file = re.escape(str(tmp_path / "data.jsonl"))
    with pytest.raises(DataError, match=rf"^{data_file}: none of the 1 conversation.*longer data.seq_len"):
        dataset(tmp_path, tok, [long_prompt], seq_len=prompt_len - 1)


def test_of_several_files_one_with_no_sample_that_fits_is_skipped_with_a_warning(tmp_path, tok, caplog):
    from zer02llm.config import DataConfig
    from zer02llm.data.inputs import sft_data

    long_prompt = [user("word " * 60), assistant("ok")]
    short = [user("Hi"), assistant("Hello.")]
    fits = write_jsonl(tmp_path / "short.jsonl", [{"conversations": c} for c in (short, short, short)])
    too_long = write_jsonl(tmp_path / "long.jsonl", [{"conversations": long_prompt}])
    data = DataConfig(train_path=[str(fits), str(too_long)], val_path=None, seq_len=32,
                      cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        train, _ = sft_data(data, tok, seed=0)
    assert len(train) == 3  # the short file's conversations, nothing of the other
    assert f"{too_long}: none of the 1 conversation(s)" in caplog.text and "skipped" in caplog.text
    # alone, or with no other file that fits, the file is still refused
    with pytest.raises(DataError, match="none of the 1 conversation"):
        sft_data(DataConfig(train_path=[str(too_long), str(too_long)], val_path=None, seq_len=32,
                            cache_dir=str(tmp_path / "cache")), tok, seed=0)


def test_batch_is_right_padded_with_pad_id_and_ignored_targets(tmp_path, tok):
    short, long = [user("Hi"), assistant("Yo")], [user("Tell me a story."), assistant("Once upon a time, a cat.")]
    data = dataset(tmp_path, tok, [short, long], seq_len=256)
    expect_short = Expect(tok).prompt_turn("user", "Hi").answer_turn("Yo")
    expect_long = Expect(tok).prompt_turn("user", "Tell me a story.").answer_turn("Once upon a time, a cat.")
    width = len(expect_long.ids) - 1
    pad = width - (len(expect_short.ids) - 1)
    inputs, targets = data.batch([0, 1])
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.shape == targets.shape == (2, width) and pad > 0
    assert inputs[0].tolist() == expect_short.ids[:-1] + [PAD] * pad
    assert targets[0, -pad:].tolist() == [IGN] * pad
    assert inputs[1].tolist() == expect_long.ids[:-1]
    alone_inputs, _ = data.batch([0])  # a batch pads to its own longest sample only
    assert alone_inputs.shape == (1, len(expect_short.ids) - 1)
    odd = SFTDataset(tokenize_sft_to_cache(tmp_path / "data.jsonl", tok, tmp_path / "cache", progress=False),
                     256, pad_id=77)
    assert odd.batch([1, 0])[0][1, -pad:].tolist() == [77] * pad


# --- the cache ---------------------------------------------------------------------------------


def test_cache_holds_tokens_mask_and_offsets(tmp_path, tok):
    conversations = [[user("Hi"), assistant("Yo")], [system("S"), user("Q"), assistant("A"), user("Q2"), assistant("B")]]
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": c} for c in conversations])
    cache = tokenize_sft_to_cache(path, tok, tmp_path / "cache", progress=False)
    first = Expect(tok).prompt_turn("user", "Hi").answer_turn("Yo")
    second = (Expect(tok).prompt_turn("system", "S").prompt_turn("user", "Q").answer_turn("A")
              .prompt_turn("user", "Q2").answer_turn("B"))
    tokens, mask, offsets = cache.load()
    assert tokens.dtype == np.uint16 and mask.dtype == np.uint8 and offsets.dtype == np.int64
    assert tokens.tolist() == first.ids + second.ids
    assert mask.tolist() == [int(s) for s in first.sup + second.sup]
    assert offsets.tolist() == [0, len(first.ids), len(first.ids) + len(second.ids)]
    assert (cache.num_conversations, cache.num_tokens, cache.num_supervised, cache.bad_lines) == (
        2, len(first.ids) + len(second.ids), sum(first.sup) + sum(second.sup), 0)


def test_bad_lines_are_skipped_counted_and_reported(tmp_path, tok, caplog):
    good = {"conversations": [user("Hi"), assistant("Yo")]}
    lines = [
        json.dumps(good),  # 1
        '{"conversations": [',  # 2 bad JSON
        json.dumps({"conversations": [user("q"), {"role": "bot", "content": "a"}]}),  # 3
        json.dumps({"conversations": [user("q"), assistant("a"), user("")]}),  # 4
        "",  # 5 blank: ignored
        json.dumps({"conversations": [user("q")]}),  # 6 no assistant
        json.dumps({"conversations": [user("q"), system("s"), assistant("a")]}),  # 7 system not first
        json.dumps({"text": "a pretraining line"}),  # 8
        json.dumps(good),  # 9
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        cache = tokenize_sft_to_cache(path, tok, tmp_path / "cache", progress=False)
    assert (cache.num_conversations, cache.bad_lines) == (2, 6)
    for line_no, reason in [(2, "invalid JSON"), (3, 'unknown role "bot" in turn 2'), (4, "empty content in turn 3"),
                            (6, "no assistant turn"), (7, "system turn 2 is not the first turn")]:
        assert f"line {line_no}: {reason}" in caplog.text
    assert "skipped 6 malformed line(s)" in caplog.text and "(and 1 more)" in caplog.text
    expected = Expect(tok).prompt_turn("user", "Hi").answer_turn("Yo")
    assert cache.load()[0].tolist() == expected.ids * 2

    with pytest.raises(DataError, match=r"mixed.jsonl:2: invalid JSON .*data.strict=true"):
        tokenize_sft_to_cache(path, tok, tmp_path / "strict-cache", strict=True, progress=False)
    # the cache built above does not let the bad lines through a strict run either
    with pytest.raises(DataError, match=r"has 6 malformed line\(s\): line 2: invalid JSON"):
        tokenize_sft_to_cache(path, tok, tmp_path / "cache", strict=True, progress=False)


def test_template_rejections_are_bad_lines(tmp_path, tok):
    template = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
                "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}")
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": [user("a"), assistant("b")]},
                                              {"conversations": [user("a"), user("b"), assistant("c")]}])
    cache = tokenize_sft_to_cache(path, with_template(tok, template), tmp_path / "cache", progress=False)
    assert (cache.num_conversations, cache.bad_lines) == (1, 1)
    with pytest.raises(DataError, match="d.jsonl:2: chat template failed: roles must alternate"):
        tokenize_sft_to_cache(path, with_template(tok, template), tmp_path / "cache2", strict=True, progress=False)


def test_lines_whose_tokens_do_not_decode_back_are_bad_lines(tmp_path, tok):
    # a tokenizer that lowercases its input cannot give back "Hi": such a line is bad, with its number
    raw = json.loads((tok.path / "tokenizer.json").read_text())
    raw["normalizer"] = {"type": "Lowercase"}
    lowering = Tokenizer(tok.path, json.dumps(raw).encode(), tok.config)
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps({"conversations": [user("hi"), assistant("yo")]}), "",
                               json.dumps({"conversations": [user("Hi"), assistant("yo")]})]) + "\n")
    cache = tokenize_sft_to_cache(path, lowering, tmp_path / "cache", progress=False)
    assert (cache.num_conversations, cache.bad_lines) == (1, 1)
    with pytest.raises(DataError, match=r"d.jsonl:3: tokens do not decode to the rendered conversation"):
        tokenize_sft_to_cache(path, lowering, tmp_path / "cache2", strict=True, progress=False)


@pytest.mark.parametrize("content, message", [(None, "does not exist"), ("", "is empty"),
                                              ('{"conversations": []}\n{"text": "x"}\n', "no usable conversation")])
def test_unusable_files_are_clear_errors(tmp_path, tok, content, message):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        tokenize_sft_to_cache(path, tok, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.bin"))  # nothing half-written left as a cache


def test_second_run_reads_the_cache_and_changes_retokenize(tmp_path, tok, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": [user("Hi"), assistant("Yo")]}])
    first = tokenize_sft_to_cache(path, tok, tmp_path / "cache", progress=False)

    def refuse(_texts):
        raise AssertionError("tokenized again although the cache holds this file")

    monkeypatch.setattr(tok, "encode_batch", refuse)
    again = tokenize_sft_to_cache(path, tok, tmp_path / "cache", progress=False)
    assert again == first
    monkeypatch.undo()

    other_template = with_template(tok, tok.chat_template.replace("'\\n' }}{% endfor %}", "'\\n\\n' }}{% endfor %}"))
    assert other_template.chat_template != tok.chat_template
    by_template = tokenize_sft_to_cache(path, other_template, tmp_path / "cache", progress=False)
    assert by_template.tokens_path != first.tokens_path  # the template is part of the key

    write_jsonl(path, [{"conversations": [user("Other"), assistant("Data")]}])
    changed = tokenize_sft_to_cache(path, tok, tmp_path / "cache", progress=False)
    assert changed.tokens_path != first.tokens_path
    assert changed.load()[0].tolist() == Expect(tok).prompt_turn("user", "Other").answer_turn("Data").ids
    assert not list((tmp_path / "cache").glob("*.tmp*"))


# --- the real corpus ---------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "sft.jsonl").is_file(), reason=f"no shared SFT data at {SHARED_DATA}")
def test_real_sft_corpus(tmp_path, tok):
    path = SHARED_DATA / "sft.jsonl"
    bad = BadLines()
    conversations = list(iter_records(path, parse_sft, bad))
    assert (len(conversations), bad.count) == (3173, 0)
    cache = tokenize_sft_to_cache(path, tok, tmp_path / "cache", progress=False)
    assert (cache.num_conversations, cache.bad_lines) == (3173, 0)
    seq_len = 512
    data = SFTDataset(cache, seq_len, tok.pad_id)
    assert len(data) + data.skipped_no_target == 3173
    tokens, mask, offsets = cache.load()
    sample = 0
    for j, messages in enumerate(conversations):
        # the token stream and mask, turn by turn, independently of the template code
        expected = Expect(tok)
        for m in messages:
            if m["role"] == "assistant":
                expected.answer_turn(m["content"])
            else:
                expected.prompt_turn(m["role"], m["content"])
        assert tokens[offsets[j]:offsets[j + 1]].tolist() == expected.ids
        assert mask[offsets[j]:offsets[j + 1]].tolist() == [int(s) for s in expected.sup]
        # supervised targets in the window: answer content tokens and one eos per answer, from position 1 on
        window = min(len(expected.ids), seq_len + 1)
        want = sum(expected.sup[1:window])
        if want == 0:
            continue  # counted as skipped
        _, targets = data.batch([sample])
        assert int((targets != IGN).sum()) == want
        sample += 1
    assert sample == len(data)
    val = SHARED_DATA / "sft_val.jsonl"
    if val.is_file():
        bad = BadLines()
        assert len(list(iter_records(val, parse_sft, bad))) == 294 and bad.count == 0


# --- inputs of the wrong kind ------------------------------------------------------------------

def test_pretraining_documents_given_to_sft_suggest_dropping_mode_sft(tmp_path, tok):
    path = write_jsonl(tmp_path / "pretrain.jsonl", [{"text": "a document"}] * 3)
    with pytest.raises(DataError) as info:
        tokenize_sft_to_cache(path, tok, tmp_path / "cache", progress=False)
    assert "no usable conversation" in str(info.value)
    assert str(info.value).endswith('Lines with "text" are pretraining documents: train on them without mode=sft')


def test_compressed_sft_data_is_read_like_plain(tmp_path, tok):
    record = {"conversations": [user("Hi"), assistant("Yo")]}
    plain = write_jsonl(tmp_path / "sft.jsonl", [record] * 20)
    packed = tmp_path / "sft2.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a = tokenize_sft_to_cache(plain, tok, tmp_path / "cache", progress=False)
    b = tokenize_sft_to_cache(packed, tok, tmp_path / "cache", progress=False)
    assert b.num_conversations == 20
    assert [x.tolist() for x in a.load()] == [x.tolist() for x in b.load()]


def test_a_tokenizer_without_chat_template_is_a_data_error_for_the_training_command(tmp_path, tok):
    # train.py turns DataError (and ConfigError) into one line and exit status 2
    path = write_jsonl(tmp_path / "d.jsonl", [{"conversations": [user("Hi"), assistant("Yo")]}])
    with pytest.raises(DataError, match="has no chat template"):
        tokenize_sft_to_cache(path, with_template(tok, None), tmp_path / "cache", progress=False)
    with pytest.raises(DataError, match="is not prefix-stable"):
        tokenize_sft_to_cache(path, with_template(tok, "{{ messages | length }}"), tmp_path / "cache", progress=False)
