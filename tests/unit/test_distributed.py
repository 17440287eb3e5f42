"""Several processes on one CPU (gloo): finetune under accelerate's FSDP ends where one process ends; DDP too,
since the token-weighted loss is divided by the step's targets over every process; distill and prune split the
training rows between processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tuneforge.config import FinetuneConfig, validate
from tuneforge.recipes.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
FSDP_CPU = REPO / "recipes" / "accelerate" / "fsdp_cpu_2proc.yaml"


def recipe(model_dir, data, out, method: str) -> dict:
    cols = {"path": str(data), "text_column": "sentence", "label_column": "label"}
    return {
        "name": "run", "output_dir": str(out), "model": str(model_dir), "dtype": "float32", "method": method,
        # labels of 1 and 4 words: batches differ in target tokens, so a per-process loss normalisation shows
        "task": {"name": "sentiment", "labels": ["bad", "a truly wonderful film"]},
        "data": {"train": cols, "dev": cols},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"batch_size": 2, "lr": 1e-2, "epochs": 2, "log_every": 1, "eval_every": 2, "save_every": 0,
                  "bf16": "false"},
        "eval": {"batch_size": 8, "max_new_tokens": 2},
    }


def launch(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in row]


@pytest.mark.parametrize(("launcher", "method", "atol"), [
    # LoRA: observed differences ~1e-7 (float32 summation order: a reduce-scatter average against one process's sum)
    ("fsdp", "lora", 1e-5),
    # full: every weight moves by about lr (1e-2) a step, and AdamW divides by sqrt(v) + eps, so where a weight's
    # gradient is ~0 the summation-order noise is magnified (up to lr / eps); observed 1.3e-5 on 13 of 1.6M weights.
    # A real difference (a rank's rows lost, a per-process loss normalisation) is ~1e-2 (measured: 0.037)
    ("fsdp", "full", 1e-4),
    ("ddp", "lora", 1e-6),  # DDP: the same sums in the same order, observed exactly equal
])
def test_two_processes_end_with_the_weights_of_one(tiny_llama_dir, sentiment_tsv, tmp_path, launcher, method, atol):
    """2 processes x batch 2 against 1 process x batch 2 x grad_accum 2: the same 4 rows a step (process r takes
    every 2nd batch of the one shuffled order, see training.setup.shard_batches), the same 4 steps."""
    data = recipe(tiny_llama_dir, sentiment_tsv, tmp_path / "two", method)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    cli = ["-m", "tuneforge.cli", "finetune", str(tmp_path / "recipe.yaml")]
    if launcher == "fsdp":  # what the README shows: accelerate launch --config_file ... -m tuneforge.cli finetune ...
        launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CPU), *cli])
    else:
        launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cli])
    two = tmp_path / "two" / "run"
    one = finetune(validate(FinetuneConfig, {**recipe(tiny_llama_dir, sentiment_tsv, tmp_path / "one", method),
                                             "train": {**data["train"], "grad_accum": 2}}))

    train = json.loads((two / "metrics.json").read_text())["train"]
    assert train["processes"] == 2 and train["distributed"] == ("FSDP" if launcher == "fsdp" else "MULTI_CPU")
    assert train["steps"] == 4
    # the logged loss is the step's over both processes' rows, as one process logs it
    torch.testing.assert_close(losses(two), losses(one), rtol=1e-6, atol=1e-5)
    weights = "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    a, b = load_file(str(one / weights)), load_file(str(two / weights))
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=atol, msg=name)
    base = load_file(str(tiny_llama_dir / "model.safetensors"))
    moved = [n for n in a if "lora_B" in n] if method == "lora" else [n for n in a if n in base]
    assert moved and all((a[n] - base.get(n, torch.zeros_like(a[n]))).abs().max() > 1e-3 for n in moved)  # it trained
    dev = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines() if "dev_accuracy" in line]
    assert [row["step"] for row in dev] == [2]  # scored mid-run on the gathered weights


@pytest.mark.parametrize("verb", ["distill", "prune"])
def test_distill_and_prune_processes_train_on_disjoint_rows(tiny_llama_dir, sentiment_tsv, tmp_path, verb):
    """torchrun, 2 processes: each process's forward passes see half of the training rows, none twice, and the
    processes agree on one run folder that the main process alone writes."""
    worker = Path(__file__).with_name("rows_worker.py")
    out = tmp_path / "out"
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker), verb,
            str(tiny_llama_dir), str(sentiment_tsv), str(out)])
    ranks = [json.loads((out / f"rows-rank{r}.json").read_text()) for r in (0, 1)]
    seen = [{tuple(ids) for ids in rank["seen"]} for rank in ranks]
    rows = {tuple(ids) for ids in ranks[0]["examples"]}
    assert len(rows) == 8 and ranks[0]["examples"] == ranks[1]["examples"]
    assert all(len(rank["seen"]) == 4 for rank in ranks)  # 8 rows, 1 epoch: 2 batches of 2 each
    assert not seen[0] & seen[1], "a row trained on both processes"
    assert seen[0] | seen[1] == rows
    assert ranks[0]["run_dir"] == ranks[1]["run_dir"] == str(out / verb)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [verb]  # no second run folder from process 1
    assert (out / verb / "metrics.json").exists() and (out / verb / "model").is_dir()


def test_verbs_that_keep_their_own_model_refuse_fsdp():
    from accelerate.utils import DistributedType

    from tuneforge.errors import UserError
    from tuneforge.training.optim import refuse_sharding

    class Accelerator:
        distributed_type = DistributedType.FSDP

    with pytest.raises(UserError, match="distill and prune do not run under FSDP.*torchrun"):
        refuse_sharding(Accelerator(), "distill and prune")
    Accelerator.distributed_type = DistributedType.MULTI_CPU
    refuse_sharding(Accelerator(), "distill and prune")
