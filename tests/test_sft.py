"""``opo sft``: which tokens are trained, bad rows, added tokens, the loss, resume, the CLI."""

import copy
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from opo.cli import main
from opo.commands import sft as sft_command
from opo.commands.sft import micro_batches, sft, token_nll, warmup_cosine
from opo.config import SftDataConfig, load_sft_config
from opo.models import add_special_tokens, load_model
from opo.sft_data import assistant_mask, load_data, plan_epoch

TAGS = ["<think>", "</think>", "<no_think>", "</no_think>"]
TINY = ["model.path=tiny", "run.progress=false", "run.deterministic=true", "sft.lr=1e-3", "sft.batch_tokens=120",
        "sft.micro_batch_tokens=64"]


def chat(user, assistant, *more):
    turns = [user, assistant, *more]
    return {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]}


def write(path, rows):
    path.write_bytes(b"\n".join(r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
                                for r in rows) + b"\n")
    return path


def arithmetic_rows(n):
    return [chat(f"What is {i} + {i + 1}?", ("<think>add them</think>" if i % 2 else "<no_think></no_think>")
                 + f"It is {2 * i + 1}.") for i in range(n)]


def test_only_assistant_content_and_its_end_token_are_trained(tiny):
    _, tok = tiny
    ids, trained = assistant_mask(tok, chat("hi", "hello there", "q2", "a2")["messages"])
    runs, current = [], []  # maximal runs of trained positions
    for i, t in enumerate(trained):
        if t:
            current.append(i)
        elif current:
            runs, current = runs + [current], []
    assert current == []  # the newline after the last <|im_end|> is template glue, not trained
    assert [tok.decode([ids[i] for i in run]) for run in runs] == ["hello there<|im_end|>", "a2<|im_end|>"]
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert [ids[i] for i in runs[0]] == enc("hello there") + [im_end]
    assert [ids[i] for i in runs[1]] == enc("a2") + [im_end]
    for run in runs:  # each run starts right after the generation prompt and is followed by the newline
        assert tok.decode(ids[: run[0]]).endswith("<|im_start|>assistant\n") and tok.decode([ids[run[-1] + 1]]) == "\n"
    assert tok.decode(ids[: runs[0][0]]).count("hi<|im_end|>") == 1 and sum(trained) == len(runs[0]) + len(runs[1])


GOOD = json.dumps(chat("1 + 1?", "2"))
BAD_ROWS = [
    ('{"messages": [', "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    ("[1, 2]", "expected a JSON object"),
    ('{"text": "hi"}', "no 'messages' field"),
    ('{"messages": "hi"}', "'messages' must be a non-empty list"),
    ('{"messages": []}', "'messages' must be a non-empty list"),
    ('{"messages": ["hi"]}', r"messages\[0\] is not an object"),
    (json.dumps({"messages": [{"role": "bot", "content": "x"}]}), r"messages\[0\]: role 'bot' is not one of"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}), r"messages\[0\]: content must be text, got int"),
    (json.dumps({"messages": [{"role": "user"}]}), r"messages\[0\]: content must be text, got NoneType"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "no assistant message"),
    (json.dumps({"messages": [{"role": "assistant", "content": "x"}]}), r"messages\[0\] is an assistant message"),
    (json.dumps(chat("seven " * 40, "7")), "conversation of [0-9]+ tokens is longer than data.max_length=48"),
]


@pytest.mark.parametrize("bad, reason", BAD_ROWS)
def test_a_bad_row_names_file_and_line_or_is_skipped_with_a_warning(tmp_path, tiny, capsys, bad, reason):
    _, tok = tiny
    path = write(tmp_path / "d.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(ValueError, match=f"d.jsonl:2: {reason}.*data.skip_bad_rows=true"):
        load_data(SftDataConfig(path=str(path), max_length=48), tok, 0)
    data = load_data(SftDataConfig(path=str(path), max_length=48, skip_bad_rows=True), tok, 0)
    assert [c.line for c in data.train] == [1, 3] and data.skipped == 1
    warning = capsys.readouterr().err
    assert "skipped 1 bad row" in warning and "d.jsonl:2: " in warning


def test_missing_empty_and_all_held_out_files_are_clear_errors(tmp_path, tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="data.path '.*nope.jsonl' does not exist"):
        load_data(SftDataConfig(path=str(tmp_path / "nope.jsonl")), tok, 0)
    with pytest.raises(ValueError, match="data.path '.*empty.jsonl' holds no usable rows"):
        load_data(SftDataConfig(path=str(write(tmp_path / "empty.jsonl", [""]))), tok, 0)
    two = write(tmp_path / "two.jsonl", [GOOD, GOOD])
    with pytest.raises(ValueError, match="data.eval_size=2 holds out all 2 usable rows"):
        load_data(SftDataConfig(path=str(two), eval_size=2), tok, 0)
    with pytest.raises(ValueError, match="data.eval_path '.*gone.jsonl' does not exist"):
        load_data(SftDataConfig(path=str(two), eval_path=str(tmp_path / "gone.jsonl")), tok, 0)


def test_a_template_that_rewrites_earlier_turns_is_refused_even_when_skipping_bad_rows(tmp_path, tiny):
    tok = copy.deepcopy(tiny[1])
    # like templates that drop the reasoning of earlier assistant turns: the last one alone is shown in full
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n"
                         "{% if m.role != 'assistant' or loop.last %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    path = write(tmp_path / "d.jsonl", [GOOD, chat("a", "b", "c", "d")])
    with pytest.raises(ValueError, match=r"d.jsonl:2: the chat template does not render messages\[1\] \(assistant\)"):
        load_data(SftDataConfig(path=str(path), skip_bad_rows=True), tok, 0)


def test_held_out_rows_are_drawn_with_the_seed_and_never_trained(tmp_path, tiny):
    _, tok = tiny
    path = write(tmp_path / "d.jsonl", arithmetic_rows(10))
    a, b = (load_data(SftDataConfig(path=str(path), eval_size=3), tok, seed) for seed in (0, 0))
    assert [c.line for c in a.eval] == [c.line for c in b.eval] and len(a.eval) == 3 and len(a.train) == 7
    assert not {c.line for c in a.eval} & {c.line for c in a.train}


def test_added_tokens_are_single_ids_start_at_the_mean_of_their_pieces_and_survive_save_and_load(tmp_path):
    model, tok = load_model("tiny")
    # an untied output layer (shifted, so its rows differ from the input embedding's)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() + 1.0)
    old_tok, old_in, old_out = copy.deepcopy(tok), model.model.embed_tokens.weight.detach().clone(), \
        model.lm_head.weight.detach().clone()
    ids = add_special_tokens(model, tok, [*TAGS, "<|im_end|>"])
    assert ids[-1] == old_tok.convert_tokens_to_ids("<|im_end|>")  # present already: left alone
    assert ids[:4] == list(range(len(old_tok), len(old_tok) + 4)) and len(tok) == len(old_tok) + 4
    for tag, i in zip(TAGS, ids):
        pieces = old_tok.encode(tag, add_special_tokens=False)
        assert len(pieces) > 1 and tok.encode(f"a{tag}b", add_special_tokens=False)[1] == i
        assert torch.equal(model.model.embed_tokens.weight[i], old_in[pieces].mean(0))
        assert torch.equal(model.lm_head.weight[i], old_out[pieces].mean(0))
    assert torch.equal(model.model.embed_tokens.weight[: len(old_tok)], old_in)  # old rows untouched
    before = model.model.embed_tokens.weight.detach().clone()
    assert add_special_tokens(model, tok, TAGS) == ids[:4] and torch.equal(model.model.embed_tokens.weight, before)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    assert loaded_tok.convert_tokens_to_ids(TAGS) == ids[:4] and tok.decode(ids[:4]) == "".join(TAGS)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_warmup_then_cosine_never_reaches_zero():
    factors = [warmup_cosine(s, 2, 10) for s in range(10)]
    assert factors[:3] == [1 / 3, 2 / 3, 1.0]
    assert all(a > b > 0 for a, b in zip(factors[2:], factors[3:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert warmup_cosine(0, 0, 5) == 1.0


def test_epoch_plans_cover_every_row_once_within_the_budget_and_repeat_for_a_seed():
    lengths = [5, 40, 12, 7, 33, 20, 9, 60, 15, 3]
    plan = plan_epoch(lengths, 50, 4, seed=0, epoch=0)
    assert sorted(i for b in plan for i in b) == list(range(10))
    assert all(sum(lengths[i] for i in b) <= 50 or len(b) == 1 for b in plan)
    assert plan == plan_epoch(lengths, 50, 4, seed=0, epoch=0) != plan_epoch(lengths, 50, 4, seed=0, epoch=1)


def test_token_nll_is_the_plain_cross_entropy_and_micro_batching_is_exact(tmp_path, tiny):
    model, tok = tiny
    path = write(tmp_path / "d.jsonl", [chat("hi", "hello there", "q2", "a2"), *arithmetic_rows(3)])
    convs = load_data(SftDataConfig(path=str(path)), tok, 0).train
    plain = 0.0
    for c in convs:  # the full-vocabulary computation, one conversation at a time
        logits = model(input_ids=c.ids.long().unsqueeze(0)).logits[0, :-1]  # (L-1, V)
        plain += F.cross_entropy(logits, c.ids.long()[1:], reduction="none")[c.trained[1:]].sum()
    one = token_nll(model, convs, tok.pad_token_id, "fp32", True)  # one padded batch
    assert float(one.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
    bf16 = token_nll(model, convs, tok.pad_token_id, "bf16", True)  # autocast, fp32 output layer
    assert float(bf16.detach()) == pytest.approx(float(plain.detach()), rel=1e-2)

    def grads(groups):
        model.zero_grad()
        for g in groups:
            token_nll(model, g, tok.pad_token_id, "fp32", True).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole, split = grads([convs]), grads(micro_batches(convs, 1))  # one conversation per pass
    assert len(micro_batches(convs, 1)) == len(convs)
    worst = max(float((a - b).abs().max() / a.abs().max().clamp(min=1e-12)) for a, b in zip(whole, split))
    assert worst < 1e-4  # fp32 sums in another order (padding, thread count), not a different normaliser
    model.zero_grad()


def test_the_held_out_loss_falls_on_rows_seen_in_training(tmp_path):
    path = write(tmp_path / "d.jsonl", arithmetic_rows(4))
    summary = sft(load_sft_config(None, [*TINY, f"data.path={path}", f"data.eval_path={path}", "sft.epochs=8",
                                         "sft.lr=1e-2", f"sft.add_tokens={','.join(TAGS)}",
                                         f"run.dir={tmp_path / 'r'}"]))
    before, after = summary["before"]["eval/loss"], summary["after"]["eval/loss"]
    assert before > 10 and after < before / 2, (before, after)  # ln(49k) ~ 10.8 at random; memorised well below
    assert [e["epoch"] for e in summary["epochs"]] == list(range(1, 9))
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "epoch", "loss", "tokens", "lr", "grad_norm", "time/step"} <= set(rows[1])
    model, tok = load_model(summary["model"])  # the fine-tuned model, with the tags as single tokens
    assert [len(tok.encode(t, add_special_tokens=False)) for t in TAGS] == [1] * 4


def test_a_run_stopped_by_a_signal_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    path = write(tmp_path / "d.jsonl", arithmetic_rows(6))
    args = [*TINY, f"data.path={path}", "data.eval_size=1", "sft.epochs=2", "sft.warmup_ratio=0.5",
            "checkpoint.every=1", "checkpoint.keep=20", f"sft.add_tokens={','.join(TAGS)}"]
    full = sft(load_sft_config(None, [*args, f"run.dir={tmp_path / 'full'}"]))
    real_step, calls = sft_command.train_step, []

    def step_then_signal(r, rows):
        calls.append(rows)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the step finishes, then the run stops
        return real_step(r, rows)

    monkeypatch.setattr(sft_command, "train_step", step_then_signal)
    part = tmp_path / "part"
    assert sft(load_sft_config(None, [*args, f"run.dir={part}"]))["stopped"] == "SIGTERM"
    monkeypatch.setattr(sft_command, "train_step", real_step)
    with pytest.raises(ValueError, match=r"differ from the run's .*sft.lr: 0.001 -> 0.002"):
        sft(load_sft_config(None, [*args, f"run.dir={part}", "checkpoint.resume=true", "sft.lr=2e-3"]))
    resumed = sft(load_sft_config(None, [*args, f"run.dir={part}", "checkpoint.resume=true"]))
    assert resumed["model"].endswith(full["model"][-12:]) and resumed["after"] == full["after"]
    a, b = load_file(f"{full['model']}/model.safetensors"), load_file(f"{resumed['model']}/model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    first = load_file(f"{tmp_path / 'full'}/checkpoints/step_0000001/model.safetensors")
    assert any(not torch.equal(first[k], a[k]) for k in a)  # training moved the weights
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(int(full["model"][-7:]) + 1))  # each step logged once, step 0: before training
    with pytest.raises(ValueError, match="nothing to train"):
        sft(load_sft_config(None, [*args, f"run.dir={part}", "checkpoint.resume=true"]))
    with pytest.raises(ValueError, match=r"sft.add_tokens adds \['<new>'\] to the run's tokenizer"):
        sft(load_sft_config(None, [*args, f"run.dir={part}", "checkpoint.resume=true", "checkpoint.allow_changes=true",
                                   f"sft.add_tokens={','.join(TAGS)},<new>"]))


@pytest.mark.parametrize("args, message", [
    ([], "data.path is required"),
    (["data=DATA", "sft.lr=0"], "sft.lr must be > 0"),
    (["data=DATA", "sft.nope=1"], "unknown config key 'sft.nope'"),
    (["data=DATA", "sft.epochs=0"], "sft.epochs must be >= 1"),
    (["data=DATA", "sft.warmup_ratio=1.5"], "sft.warmup_ratio must be <= 1"),
    (["data=DATA", "sft.betas=[0.9, 1.5]"], "sft.betas must be two numbers"),
    (["data=DATA", "sft.add_tokens=[a, a]"], "sft.add_tokens must be distinct non-empty texts"),
    (["data=DATA", "checkpoint.resume=true"], "needs an explicit run.dir"),
    (["data=DATA", "overwrite=true", "checkpoint.resume=true", "run.dir=r"], "overwrite=true deletes"),
    (["data=DATA", "data.max_length=many"], "data.max_length must be int"),
])
def test_config_errors_exit_2_naming_the_key(tmp_path, capsys, args, message):
    data = write(tmp_path / "d.jsonl", [GOOD])
    assert main(["sft", *(a.replace("DATA", str(data)) for a in args)]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and message in err


def test_a_missing_data_file_exits_2_before_anything_loads(tmp_path, capsys):
    assert main(["sft", "model.path=/nonexistent/model", f"data={tmp_path / 'nope.jsonl'}",
                 f"run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert f"config error: data.path '{tmp_path / 'nope.jsonl'}' does not exist" in err
    assert not (tmp_path / "r").exists()


def test_a_bad_row_exits_2_naming_file_and_line_before_the_model_loads(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [GOOD, '{"messages": "hi"}'])
    assert main(["sft", "model.path=tiny", "run.progress=false", f"data={data}", f"run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert f"error: {data}:2: 'messages' must be a non-empty list" in err and "Traceback" not in err


@pytest.mark.e2e
def test_cli_sigterm_exits_143_and_the_resumed_run_finishes_with_the_added_tokens(tmp_path, sigterm_after_rows):
    data = write(tmp_path / "d.jsonl", arithmetic_rows(4))
    run = tmp_path / "run"
    args = [sys.executable, "-m", "opo", "sft", *TINY, f"data={data}", "sft.epochs=30", "sft.batch_tokens=1",
            "sft.add_tokens=<think>,</think>", f"run_dir={run}"]
    metrics = run / "metrics.jsonl"
    sigterm_after_rows(args, metrics, 120)
    done = subprocess.run([*args, "resume=true"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    model_dir = done.stdout.split("model: ")[1].split()[0]
    assert model_dir.endswith("step_0000120")
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 121))  # no held-out set: no step-0 row
    _, tok = load_model(model_dir)
    assert [len(tok.encode(t, add_special_tokens=False)) for t in TAGS[:2]] == [1, 1]


def test_a_template_that_puts_tokens_before_a_leading_special_token_is_refused(tiny):
    # Qwen3-style templates prepend an empty <think></think> block to the last assistant turn: a
    # '<no_think>' row would then be trained to open with other tokens, not its mode tag
    from opo.sft_data import TemplateError, assistant_mask
    _, tok = tiny
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<no_think>"]})
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<no_think>5"}]
    ids, trained = assistant_mask(tok, messages)
    assert tok.decode([t for t, k in zip(ids, trained) if k]).startswith("<no_think>")
    tok.chat_template = tok.chat_template.replace("'<|im_start|>' + message['role'] + '\n' + message['content']",
                                                  "'<|im_start|>' + message['role'] + '\n' + ('<think></think>' if message['role'] == 'assistant' else '') + message['content']")
    with pytest.raises(TemplateError, match="before the special token"):
        assistant_mask(tok, messages)
