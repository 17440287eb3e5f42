"""`tuneforge continual` on a tiny random Llama: every strategy runs and fills its ledger, replay mixes the stated
share, merging is peft's, the penalties behave, and a run interrupted in a stage resumes to the same ledger."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from tuneforge.config import validate
from tuneforge.continual import strategies as S
from tuneforge.continual.config import ContinualConfig


@pytest.fixture()
def topics_tsv(tmp_path) -> Path:
    """A second sentiment-like stage with other words (written here, not copied from a data set)."""
    rows = ["sentence\tlabel", "the soup was cold\t0", "great service , kind staff\t1", "món ăn rất ngon\t1",
            "phục vụ chậm\t0", "fresh bread\t1", "burnt coffee\t0", "lovely terrace\t1", "rude waiter\t0"]
    path = tmp_path / "food.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def recipe(model: Path, first: Path, second: Path, out: Path, strategy, **train) -> dict:
    cols = {"text_column": "sentence", "label_column": "label"}
    task = {"name": "sentiment", "labels": ["negative", "positive"]}
    stage = lambda name, path: {"name": name, "task": task,  # noqa: E731
                                "data": {"train": {"path": str(path), **cols}, "dev": {"path": str(path), **cols}}}
    return {"name": "cl", "output_dir": str(out), "model": str(model), "dtype": "float32",
            "stages": [stage("films", first), stage("food", second)],
            "eval": {"batch_size": 8, "max_new_tokens": 3,
                     "probes": [{"name": "films-probe", "task": task, "data": {"path": str(first), **cols}, "limit": 4}]},
            "continual": {"strategy": strategy, "replay": {"ratio": 0.25}, "ewc": {"rows": 4, "weight": 10.0},
                          "merge": {"method": "ties", "density": 0.5}},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"batch_size": 2, "lr": 5e-3, "max_seq_len": 64, "epochs": 2, "bf16": "false", **train}}


def run(data: dict) -> Path:
    from tuneforge.recipes.continual import continual

    return continual(validate(ContinualConfig, data))


def test_every_strategy_fills_its_ledger_and_the_table(tiny_llama_dir, sentiment_tsv, topics_tsv, tmp_path):
    strategies = ["sequential", "replay", "adapter_per_task", "l2", "ewc", "self_distill"]
    out = run(recipe(tiny_llama_dir, sentiment_tsv, topics_tsv, tmp_path / "runs", strategies))
    table = json.loads((out / "metrics.json").read_text())["strategies"]
    names = [r["strategy"] for r in table]
    assert names == ["sequential", "replay", "adapter_per_task (routed)", "adapter_per_task (merged)", "l2", "ewc",
                     "self_distill"]
    base = json.loads((out / "base_scores.json").read_text())
    for strategy in strategies:
        folder = out / strategy
        ledger = json.loads((folder / "ledger.json").read_text())
        for book in ledger["ledgers"].values():
            assert book["tasks"] == ["films", "food", "films-probe"] and len(book["rows"]) == 3
            assert book["rows"][0] == [base["films"], base["food"], base["films-probe"]]  # the base scored once
        for k, name in ((1, "films"), (2, "food")):
            adapter = folder / "stages" / f"{k}-{name}" / "adapter"
            assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
        assert (folder / "report.html").exists() and list(folder.glob("ledger_*.png"))
    assert (out / "report.html").exists() and (out / "strategies.png").exists()

    replay = json.loads((out / "replay" / "ledger.json").read_text())["stages"]
    # ratio 0.25 of the mixed set: 8 new rows take round(8 * 0.25 / 0.75) = 3 earlier ones; none in stage 1
    assert [s["replayed_rows"] for s in replay] == [0, 3] and replay[1]["replayed_tokens"] > 0
    routed = json.loads((out / "adapter_per_task" / "ledger.json").read_text())["ledgers"]["routed"]["rows"]
    assert routed[2][0] == routed[1][0], "a routed task keeps its own adapter's score"
    assert routed[2][2] == routed[0][2], "a probe is answered by the base model when requests are routed"


def test_the_merge_is_peft_ties_of_the_stage_adapters(tiny_llama_dir, sentiment_tsv, topics_tsv, tmp_path):
    """The merged model the ledger scores equals peft's own TIES merge of the two saved adapters."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.continual.runner import ContinualRun

    out = run(recipe(tiny_llama_dir, sentiment_tsv, topics_tsv, tmp_path / "runs", "adapter_per_task"))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out / "stages" / "1-films" / "adapter", adapter_name="films")
    model.load_adapter(out / "stages" / "2-food" / "adapter", adapter_name="food")
    torch.manual_seed(0)
    model.add_weighted_adapter(["films", "food"], [1.0, 1.0], "merged", combination_type="ties", density=0.5)
    model.set_adapter("merged")
    expected = model.merge_and_unload()
    run_ = ContinualRun.__new__(ContinualRun)  # the merge alone, on the adapters read back
    run_.cfg = validate(ContinualConfig, recipe(tiny_llama_dir, sentiment_tsv, topics_tsv, tmp_path, "adapter_per_task"))
    run_.strategy, run_.model = "adapter_per_task", PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
        out / "stages" / "1-films" / "adapter", adapter_name="films")
    run_.model.load_adapter(out / "stages" / "2-food" / "adapter", adapter_name="food")
    run_.stages = [type("C", (), {"name": "films"}), type("C", (), {"name": "food"})]
    got = run_.merged_model(1)
    for (name, a), (_, b) in zip(expected.state_dict().items(), got.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_adapter_chain_trains_like_sequential_and_keeps_each_stage(tiny_llama_dir, sentiment_tsv, topics_tsv,
                                                                    tmp_path):
    """adapter_chain's stage adapters start where the previous stage ended, so they are sequential's stage by stage;
    routed, each task keeps the score its own stage gave it (BWT 0), and its last task is sequential's."""
    from safetensors.torch import load_file

    out = run(recipe(tiny_llama_dir, sentiment_tsv, topics_tsv, tmp_path / "runs", ["sequential", "adapter_chain"]))
    for stage in ("1-films", "2-food"):
        seq = load_file(out / "sequential" / "stages" / stage / "adapter" / "adapter_model.safetensors")
        chain = load_file(out / "adapter_chain" / "stages" / stage / "adapter" / "adapter_model.safetensors")
        assert seq.keys() == chain.keys()
        for name in seq:
            torch.testing.assert_close(chain[name], seq[name], msg=f"{stage}: {name}")
    seq = json.loads((out / "sequential" / "ledger.json").read_text())["ledgers"]["sequential"]["rows"]
    routed = json.loads((out / "adapter_chain" / "ledger.json").read_text())["ledgers"]["routed"]["rows"]
    assert routed[1][0] == seq[1][0] and routed[2][1] == seq[2][1], "each stage's own score, as sequential's"
    assert routed[2][0] == routed[1][0], "the first task keeps its own adapter's score after the second stage"
    table = {r["strategy"]: r for r in json.loads((out / "metrics.json").read_text())["strategies"]}
    assert table["adapter_chain (routed)"]["BWT"] == 0.0
    assert table["adapter_chain (routed)"]["served MB"] > 1.9 * table["sequential"]["served MB"]


def test_penalties_are_zero_at_the_anchor_and_grow_away_from_it():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    anchor = S.snapshot(net)
    batches = [{"x": torch.randn(2, 4)} for _ in range(3)]

    class Loss(nn.Module):
        def forward(self, x):
            return (net(x) ** 2).sum(), x.shape[0]

    fisher = S.diagonal_fisher(net, Loss(), batches)
    assert all((f >= 0).all() and f.sum() > 0 for f in fisher.values())
    assert float(S.l2_penalty(net, anchor)) == 0.0
    assert float(S.ewc_penalty(net, [(fisher, anchor)])) == 0.0
    previous = (0.0, 0.0)
    for step in (0.01, 0.1, 1.0):
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(anchor[n] + step)
        now = (float(S.l2_penalty(net, anchor)), float(S.ewc_penalty(net, [(fisher, anchor)])))
        assert now[0] > previous[0] and now[1] > previous[1]
        previous = now
    # EWC weighs each weight by its Fisher: moving only weights the data never touched costs nothing
    fisher0 = {n: torch.zeros_like(f) for n, f in fisher.items()}
    assert float(S.ewc_penalty(net, [(fisher0, anchor)])) == 0.0


def test_replay_draws_the_stated_share_seeded():
    earlier = [[{"i": i} for i in range(10)], [{"i": 100 + i} for i in range(10)]]
    picked = S.replay_rows(earlier, new_rows=30, ratio=0.25, seed=1)
    assert len(picked) == 10 and picked == S.replay_rows(earlier, 30, 0.25, seed=1)
    assert picked != S.replay_rows(earlier, 30, 0.25, seed=2)
    assert S.replay_rows(earlier, 30, 0.0, seed=1) == [] and len(S.replay_rows(earlier, 300, 0.5, 0)) == 20


@pytest.mark.parametrize("strategy", ["sequential", "adapter_per_task"])
def test_a_run_interrupted_in_a_stage_resumes_to_the_same_ledger(tiny_llama_dir, sentiment_tsv, topics_tsv, tmp_path,
                                                                  capsys, monkeypatch, strategy):
    from tuneforge.training import loop
    from tuneforge.training.loop import Interrupted

    base = recipe(tiny_llama_dir, sentiment_tsv, topics_tsv, tmp_path / "runs", strategy)
    full = run({**base, "name": "full"})
    original, calls = loop.collate, []

    def pressed(*args, **kwargs):  # Ctrl-C in stage 2's third step (stage 1 takes 8 steps)
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "collate", pressed)
    with pytest.raises(Interrupted):
        run({**base, "name": "cut"})
    monkeypatch.setattr(loop, "collate", original)
    hint = re.search(r"resume with: tuneforge continual <config> train\.resume=(\S+)", capsys.readouterr().err)
    assert hint and "2-food" in hint[1]
    resumed = run({**base, "name": "cut", "train": {**base["train"], "resume": hint[1]}})
    assert resumed == tmp_path / "runs" / "cut"
    stages = json.loads((resumed / "ledger.json").read_text())["stages"]
    assert "resumed_from_step" not in stages[0] and stages[1]["resumed_from_step"] == 2  # stage 1 was not redone
    a = json.loads((full / "ledger.json").read_text())["ledgers"]
    b = json.loads((resumed / "ledger.json").read_text())["ledgers"]
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["rows"] == b[name]["rows"], name


def test_a_continual_run_is_one_tracked_run_with_each_stage_and_the_ledger(tiny_llama_dir, sentiment_tsv, topics_tsv,
                                                                           tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the track extra (pip install 'tuneforge[track]')")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = run(recipe(tiny_llama_dir, sentiment_tsv, topics_tsv, tmp_path / "runs", "sequential",
                         log_every=1, report_to=["mlflow"]))
    client = MlflowClient(tracking_uri=uri)
    tracked = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "cl"
    for stage in ("1-films", "2-food"):
        assert f"{stage}/train/loss" in tracked.data.metrics
    ledger = json.loads((run_dir / "metrics.json").read_text())["ledgers"]["sequential"]["rows"]
    history = client.get_metric_history(tracked.info.run_id, "ledger/sequential/films")
    assert [(m.step, m.value) for m in history] == [(1, pytest.approx(ledger[1][0])), (2, pytest.approx(ledger[2][0]))]
    assert tracked.data.params["continual.strategy"] == "sequential"
