"""The finetune recipe on a tiny random Llama: masking, resume, invariance, artifacts, bad input."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tuneforge.config import FinetuneConfig, validate
from tuneforge.data.encode import collate
from tuneforge.recipes.finetune import finetune
from tuneforge.training.setup import setup


def make_cfg(model_dir, data, out, **train):
    cols = {"text_column": "sentence", "label_column": "label"}
    return validate(FinetuneConfig, {
        "name": "t", "output_dir": str(out), "model": str(model_dir), "dtype": "float32",
        "task": {"name": "sentiment"},
        "data": {"train": {"path": str(data), **cols}, "dev": {"path": str(data), **cols}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"batch_size": 2, "lr": 1e-2, "epochs": 2, "log_every": 1, "bf16": "false", **train},
        "eval": {"batch_size": 8, "max_new_tokens": 2},
    })


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


def test_lora_run_writes_a_complete_loadable_run(tiny_llama_dir, sentiment_tsv, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = finetune(make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path))
    result = json.loads((run_dir / "metrics.json").read_text())
    assert {"accuracy", "macro_f1"} <= set(result["before"]) and {"accuracy", "macro_f1"} <= set(result["after"])
    assert result["task"] == "sentiment" and result["train"]["tokens"] > 0 and result["train"]["tokens_per_second"] > 0
    for name in ("config.yaml", "metrics.jsonl", "predictions.jsonl", "report.md", "report.html", "loss_curve.png"):
        assert (run_dir / name).exists(), name
    seen = losses(run_dir)
    assert len(seen) == 8 and sum(seen[-2:]) < sum(seen[:2])  # it learns
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    loaded = PeftModel.from_pretrained(base, str(run_dir / "adapter"))  # plain peft, no tuneforge
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in loaded.named_parameters())


def test_loss_masking_and_token_weighting_are_batch_size_invariant(tiny_llama_dir, sentiment_tsv, tmp_path):
    """One step of batch 4 equals one step of 4 x batch 1 accumulated (loss weighted by target tokens)."""
    grads = []
    for batch, accum in ((4, 1), (1, 4)):
        cfg = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / f"{batch}", batch_size=batch, grad_accum=accum, epochs=0.5)
        s = setup(cfg)
        order = [0, 1, 2, 3]  # the same rows for both arms
        s.batches = [[i] for i in order] if batch == 1 else [order]
        total = sum(int((collate([s.examples[i]], 2)["labels"][:, 1:] != -100).sum()) for i in order)
        s.model.zero_grad()
        for b in s.batches:
            loss_sum, _ = s.loss_module(**collate([s.examples[i] for i in b], s.tok.pad_token_id))
            (loss_sum / total).backward()
        grads.append({n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_full_and_freeze_train_the_right_parameters(tiny_llama_dir, sentiment_tsv, tmp_path, method):
    cfg = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path, epochs=0.5)
    cfg.method = method
    cfg.freeze.trainable_blocks = 1
    s = setup(cfg)
    trainable = {n for n, p in s.model.named_parameters() if p.requires_grad}
    if method == "full":
        assert len(trainable) == len(list(s.model.parameters()))
    else:
        assert any("layers.1." in n for n in trainable) and not any("layers.0." in n for n in trainable)


def prompt_eval_run(model_dir, data, out):
    from tuneforge.recipes.prompt_eval import PromptEvalConfig, prompt_eval

    cols = {"text_column": "sentence", "label_column": "label"}
    return prompt_eval(validate(PromptEvalConfig, {
        "name": "pe", "output_dir": str(out), "model": str(model_dir), "dtype": "float32",
        "task": {"name": "sentiment"}, "strategies": ["zero_shot", "few_shot"],
        "data": {"train": {"path": str(data), **cols}, "dev": {"path": str(data), **cols}},
        "eval": {"batch_size": 8, "max_new_tokens": 2, "shots": 2},
    }))


def test_report_shows_prompting_rows_beside_before_and_after(tiny_llama_dir, sentiment_tsv, tmp_path):
    pe_dir = prompt_eval_run(tiny_llama_dir, sentiment_tsv, tmp_path / "pe")
    scored = json.loads((pe_dir / "metrics.json").read_text())["strategies"]
    cfg = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "ft", epochs=1).model_copy(update={"prompting": str(pe_dir)})
    run_dir = finetune(cfg)
    result = json.loads((run_dir / "metrics.json").read_text())
    assert [p["strategy"] for p in result["prompting"]] == ["zero_shot", "few_shot"]
    assert result["prompting"][1]["metrics"]["accuracy"] == scored["few_shot"]["accuracy"]
    report = (run_dir / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("|")]
    arms = [line.split("|")[1].strip() for line in rows]
    assert arms[-4:] == ["before (zero-shot)", "prompting: zero_shot", "prompting: few_shot", "after (lora)"]


def test_prompting_run_on_other_rows_is_refused_before_training(tiny_llama_dir, sentiment_tsv, tmp_path):
    from tuneforge.errors import UserError

    pe_dir = prompt_eval_run(tiny_llama_dir, sentiment_tsv, tmp_path / "pe")
    cfg = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "ft").model_copy(update={"prompting": str(pe_dir)})
    cfg.eval.limit = 3
    with pytest.raises(UserError, match="dev rows"):
        finetune(cfg)
    assert not (tmp_path / "ft").exists()  # refused before a run folder was made
    with pytest.raises(UserError, match="prompt-eval"):
        finetune(cfg.model_copy(update={"prompting": str(tmp_path / "missing")}))


def test_a_second_run_in_one_process_may_use_another_precision():
    """accelerate refuses a second Accelerator with another precision unless its state is dropped first
    (a notebook running finetune then prune, or these tests on a CPU where bf16=auto means bf16)."""
    from tuneforge.training.optim import make_accelerator

    assert str(make_accelerator(False).mixed_precision) == "no"
    assert str(make_accelerator(True).mixed_precision) == "bf16"
    assert str(make_accelerator(False).mixed_precision) == "no"


needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (tuneforge[bnb])")


@pytest.fixture(scope="module")
def tiny_llama_64_dir(tmp_path_factory, embedded_tokenizer):
    """Like tiny_llama_dir but 64 wide: bitsandbytes' CPU inference kernel needs blocks of 64 inputs, 32 outputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = embedded_tokenizer
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama-64")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@needs_bnb
def test_qlora_trains_lora_on_an_nf4_base_and_the_adapter_loads_on_the_float_base(tiny_llama_64_dir, sentiment_tsv, tmp_path):
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tiny_llama_64_dir, sentiment_tsv, tmp_path)
    cfg.method = "qlora"
    s = setup(cfg)
    bases = [m for n, m in s.model.named_modules() if n.endswith("proj.base_layer")]
    assert len(bases) == 2 * 7 and all(isinstance(m, bnb.nn.Linear4bit) for m in bases)  # 7 linears per block
    assert bases[0].weight.quant_state.quant_type == "nf4"
    trainable = [n for n, p in s.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    run_dir = finetune(cfg)
    seen = losses(run_dir)
    assert len(seen) == 8 and sum(seen[-2:]) < sum(seen[:2])  # it learns through the 4-bit base
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["method"] == "qlora" and {"accuracy"} <= set(result["after"])
    float_model = AutoModelForCausalLM.from_pretrained(tiny_llama_64_dir)
    train = result["train"]  # weights counted, not the bytes 4-bit packs them in
    assert train["total_params"] == sum(p.numel() for p in float_model.parameters()) + train["trainable_params"]
    loaded = PeftModel.from_pretrained(float_model, str(run_dir / "adapter"))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in loaded.named_parameters())  # a plain LoRA adapter


@needs_bnb
def test_qlora_gradients_are_the_same_after_a_dev_evaluation(tiny_llama_64_dir, sentiment_tsv, tmp_path):
    """Scoring the dev set between steps (eval mode, no gradients) must not change what training computes.

    On CPUs with AVX512-BF16, bitsandbytes repacks NF4 weights for inference there, and the repacked layers
    passed no gradient to their inputs until finetune turned that off.
    """
    from tuneforge.training.loop import validate as score_dev

    cfg = make_cfg(tiny_llama_64_dir, sentiment_tsv, tmp_path)
    cfg.method = "qlora"
    s = setup(cfg)
    import bitsandbytes as bnb

    nf4 = [m for m in s.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert nf4 and not any(m.support_avx512bf16_for_cpu for m in nf4)  # on any CPU: the repacking is off
    batch = collate(s.examples[:4], s.tok.pad_token_id)

    def gradients():
        s.model.zero_grad()
        s.loss_module(**batch)[0].backward()
        return {n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None}

    s.model.train()
    first = gradients()
    score_dev(s)
    second = gradients()
    assert first.keys() == second.keys() and any("layers.0." in n and "lora_A" in n for n in first)
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["lora", pytest.param("qlora", marks=needs_bnb)])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama_64_dir, sentiment_tsv, tmp_path, method):

    grads = {}
    for checkpointing in (False, True):
        cfg = make_cfg(tiny_llama_64_dir, sentiment_tsv, tmp_path / str(checkpointing), gradient_checkpointing=checkpointing)
        cfg.method = method
        s = setup(cfg)
        assert all(layer.gradient_checkpointing == checkpointing for layer in s.model.get_base_model().model.layers)
        assert s.loss_module.share_prefix is not checkpointing  # the prefix cache cannot cross a checkpointed block
        s.model.train()
        s.loss_module(**collate(s.examples[:4], s.tok.pad_token_id))[0].backward()
        grads[checkpointing] = {n: p.grad for n, p in s.model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, plain in grads[False].items():  # NF4 computes in the run's fp32 here, so QLoRA matches as closely
        torch.testing.assert_close(grads[True][name], plain, rtol=1e-4, atol=1e-6, msg=name)


@needs_bnb
def test_qlora_without_kernels_here_is_refused_before_any_work(tiny_llama_dir, sentiment_tsv, tmp_path, monkeypatch):
    from tuneforge.errors import UserError
    from tuneforge.models import bnb

    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    monkeypatch.setattr(bnb, "cpu_probe", lambda m: "RuntimeError: no CPU kernel")  # an old bitsandbytes build
    cfg = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "runs")
    cfg.method = "qlora"
    with pytest.raises(UserError, match="method qlora needs a CUDA GPU, or a bitsandbytes whose CPU backend runs it.*use method=lora"):
        finetune(cfg)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", ["lora", pytest.param("qlora", marks=needs_bnb)])
def test_ddp_two_cpu_processes_stay_in_step(request, sentiment_tsv, tmp_path, method):
    """torchrun --nproc_per_node 2 (gloo): both ranks end with identical LoRA weights (QLoRA: on an NF4 base)."""
    from pathlib import Path

    tiny_llama_dir = request.getfixturevalue("tiny_llama_64_dir" if method == "qlora" else "tiny_llama_dir")
    worker = Path(__file__).with_name("ddp_worker.py")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(tiny_llama_dir), str(sentiment_tsv), str(out), method]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(out / "rank0.pt")
    w1 = torch.load(out / "rank1.pt")
    assert w0.keys() == w1.keys() and w0
    for name in w0:
        torch.testing.assert_close(w0[name], w1[name])
    assert any(w0[n].abs().sum() > 0 for n in w0 if "lora_B" in n)  # they trained


@pytest.mark.parametrize("method", ["lora", pytest.param("qlora", marks=needs_bnb)])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(request, sentiment_tsv, tmp_path, method):
    tiny_llama_dir = request.getfixturevalue("tiny_llama_64_dir" if method == "qlora" else "tiny_llama_dir")
    cfg = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "a", save_every=4)
    cfg.method = method
    full = finetune(cfg)
    cfg = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "b", resume=str(full / "checkpoints" / "step-4"))
    cfg.eval_before = False
    cfg.method = method
    resumed = finetune(cfg)
    assert resumed == full  # resumes in place
    all_losses = losses(full)  # first run's 8 lines, then the resumed run's steps 5..8
    torch.testing.assert_close(all_losses[4:8], all_losses[8:], rtol=1e-5, atol=1e-6)
    train = json.loads((full / "metrics.json").read_text())["train"]
    assert train["steps"] == 4 and train["resumed_from_step"] == 4  # the stats cover the resumed part only, and say so


def test_the_resume_hint_is_the_users_own_command_with_train_resume_set(monkeypatch, tmp_path):
    from tuneforge import runs
    from tuneforge.training.checkpoints import resume_hint

    ckpt = tmp_path / "run dir" / "checkpoints" / "step-7"
    monkeypatch.setattr(runs, "command_line", ["tuneforge", "distill", "recipes/d.yaml", "data.train.limit=64",
                                               "train.resume=old"])
    assert resume_hint("tuneforge distill <config>", ckpt) == (
        f"tuneforge distill recipes/d.yaml data.train.limit=64 'train.resume={ckpt}'")
    monkeypatch.setattr(runs, "command_line", None)  # called from Python, not the CLI
    assert resume_hint("tuneforge distill <config>", ckpt) == f"tuneforge distill <config> train.resume={ckpt}"
    assert resume_hint(None, ckpt) is None


def test_a_second_ctrl_c_waits_for_the_checkpoint_being_saved():
    import os
    import signal

    from tuneforge.training.checkpoints import sigint_held

    handler = signal.getsignal(signal.SIGINT)
    with sigint_held():
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt in the middle of the save
        finished = True
    assert finished and signal.getsignal(signal.SIGINT) is handler
    applied = []
    with pytest.raises(KeyboardInterrupt):  # an optimizer update: applied whole, then the press is raised
        with sigint_held(reraise=True):
            os.kill(os.getpid(), signal.SIGINT)
            applied.append("update")
    assert applied == ["update"] and signal.getsignal(signal.SIGINT) is handler


def test_a_resumed_run_continues_in_its_own_folder(tmp_path):
    from types import SimpleNamespace

    from tuneforge.runs import run_dir_for

    cfg = SimpleNamespace(output_dir=str(tmp_path), name="r", model_dump=lambda mode: {"name": "r"},
                          train=SimpleNamespace(resume=None))
    first = run_dir_for(cfg)
    (first / "checkpoints" / "step-3").mkdir(parents=True)
    cfg.train.resume = str(first / "checkpoints" / "step-3")
    assert run_dir_for(cfg) == first.resolve()
    cfg.train.resume = "latest"
    assert run_dir_for(cfg) == first
    cfg.train.resume = None
    assert run_dir_for(cfg) == tmp_path / "r-2"
