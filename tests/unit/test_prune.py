"""Pruning on tiny random Llama models: exact mask counts, 2:4 pattern, Wanda vs magnitude, block removal,
masked recovery LoRA and save/reload of the zeros."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.compress import blocks as blk
from tuneforge.compress import prune as pr
from tuneforge.compress.masked_lora import add_masked_lora, add_masked_weights, merge_masked_lora
from tuneforge.errors import UserError


def tiny_llama(layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def calib_batches(n: int = 3, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 64, (2, 12), generator=g)
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[1, 9:] = 0  # a padded row: its pad tokens must not count
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_prunable_linears_are_the_block_matrices_only():
    names = list(pr.prunable_linears(tiny_llama(layers=2)))
    assert len(names) == 2 * 7
    assert all(n.startswith("model.layers.") for n in names)
    assert not any("lm_head" in n or "embed" in n for n in names)


def test_magnitude_per_matrix_exact_count_and_keeps_the_largest():
    model = tiny_llama()
    masks = pr.magnitude_masks(model, 0.5, scope="matrix")
    pr.apply_masks(model, masks)
    for name, lin in pr.prunable_linears(model).items():
        w = lin.weight.detach()
        assert int((w == 0).sum()) == int(0.5 * w.numel()), name
        kept, dropped = w[masks[name]].abs(), w.abs()[~masks[name]]
        assert kept.min() >= dropped.max()


def test_magnitude_per_row_exact_count_in_every_row():
    model = tiny_llama()
    pr.apply_masks(model, pr.magnitude_masks(model, 0.3, scope="row"))
    for lin in pr.prunable_linears(model).values():
        zeros_per_row = (lin.weight == 0).sum(1)
        assert (zeros_per_row == int(0.3 * lin.in_features)).all()


def test_two_four_pattern_holds_in_every_group():
    model = tiny_llama()
    pr.apply_masks(model, pr.magnitude_masks(model, 0.0, nm=pr.parse_pattern("2:4")))
    for lin in pr.prunable_linears(model).values():
        assert pr.check_nm(lin.weight, 2, 4)
        groups = lin.weight.reshape(lin.out_features, -1, 4)
        assert ((groups == 0).sum(-1) == 2).all()
    assert pr.sparsity_report(model)["prunable_sparsity"] == pytest.approx(0.5)


def test_bad_pattern_and_sparsity_are_user_errors():
    with pytest.raises(UserError, match="N:M"):
        pr.parse_pattern("4:2")
    with pytest.raises(UserError, match="sparsity"):
        pr.mask_from_scores(torch.ones(2, 4), 1.5)


def test_wanda_score_differs_from_magnitude_by_hand():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    norms = torch.tensor([10.0, 1.0, 1.0, 0.1])
    by_magnitude = pr.mask_from_scores(w.abs(), 0.5, scope="row")
    by_wanda = pr.mask_from_scores(w.abs() * norms, 0.5, scope="row")
    assert by_magnitude.tolist() == [[False, False, True, True]]
    assert by_wanda.tolist() == [[True, False, True, False]]


def test_wanda_keeps_weights_on_loud_input_features():
    model = tiny_llama()
    magnitude = pr.magnitude_masks(model, 0.5, scope="row")
    with torch.no_grad():  # features 0..7 of block 0's attention input become 10⁴× louder
        model.model.layers[0].input_layernorm.weight[:8] = 1e4
    masks = pr.wanda_prune(model, calib_batches(), 0.5)
    q = "model.layers.0.self_attn.q_proj"
    assert masks[q][:, :8].all()
    assert not magnitude[q][:, :8].all()
    for name, lin in pr.prunable_linears(model).items():
        assert ((lin.weight == 0).sum(1) == lin.in_features // 2).all(), name
        assert torch.equal(lin.weight != 0, masks[name])


def test_wanda_two_four():
    model = tiny_llama()
    pr.wanda_prune(model, calib_batches(), 0.5, nm=(2, 4))
    assert all(pr.check_nm(lin.weight, 2, 4) for lin in pr.prunable_linears(model).values())


def test_refit_matches_least_squares_by_hand_and_keeps_the_mask():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 8, generator=g) @ torch.randn(8, 8, generator=g)  # correlated input features
    w = torch.randn(3, 8, generator=g)
    mask = pr.mask_from_scores(w.abs() * x.pow(2).sum(0).sqrt(), 0.5, scope="row")
    refit = pr.refit_kept_weights(w, mask, x.T @ x, damp=1e-9)
    assert torch.equal(refit != 0, mask)
    for row in range(3):  # each row: ordinary least squares of the dense output on the kept inputs
        kept = mask[row].nonzero().squeeze(1)
        by_hand = torch.linalg.lstsq(x[:, kept].double(), (x @ w[row]).double()[:, None]).solution.squeeze(1)
        torch.testing.assert_close(refit[row, kept], by_hand.float(), atol=1e-3, rtol=1e-3)
    error = lambda v: float(((x @ v.T - x @ w.T) ** 2).sum())  # noqa: E731
    assert error(refit) < 0.5 * error(w * mask)


def test_refit_damping_pulls_towards_the_original_weights():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[True, False, True, False]])
    silent = torch.zeros(4, 4)  # no calibration signal: only the damping term is left, so kept weights stay
    torch.testing.assert_close(pr.refit_kept_weights(w, mask, silent), torch.tensor([[1.0, 0.0, 3.0, 0.0]]))


def test_refit_rejects_uneven_rows():
    with pytest.raises(UserError, match="same number of kept weights"):
        pr.refit_kept_weights(torch.ones(2, 4), torch.tensor([[True, True, False, False], [True] * 4]), torch.eye(4))


def test_wanda_refit_same_mask_and_closer_block_outputs():
    dense = tiny_llama()
    plain, refit = tiny_llama(), tiny_llama()
    masks = pr.wanda_prune(plain, calib_batches(), 0.5)
    refit_masks = pr.wanda_prune(refit, calib_batches(), 0.5, refit=True)
    batch = calib_batches(seed=7)[0]
    with torch.no_grad():
        logits = {name: m(**batch).logits for name, m in (("dense", dense), ("plain", plain), ("refit", refit))}
    assert torch.equal(masks["model.layers.0.self_attn.q_proj"], refit_masks["model.layers.0.self_attn.q_proj"])
    for name, lin in pr.prunable_linears(refit).items():
        assert torch.equal(lin.weight != 0, refit_masks[name]), name
    gap = {k: float((logits[k] - logits["dense"]).pow(2).mean()) for k in ("plain", "refit")}
    assert gap["refit"] < gap["plain"], gap


def test_block_removal_drops_the_least_important_block_and_model_still_runs():
    model = tiny_llama(layers=4)
    with torch.no_grad():  # block 2 becomes the identity: its residual branches output zero
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    batch = calib_batches(1)[0]
    importance = blk.block_importance(model, calib_batches())
    assert importance[2] == pytest.approx(0.0, abs=1e-6)
    assert min(importance[i] for i in (0, 1, 3)) > 1e-3
    drop = blk.least_important(importance, 1)
    assert drop == [2]
    with torch.no_grad():
        before = model(**batch).logits
    blk.remove_blocks(model, drop)
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before)  # removing an identity block changes nothing
    out = model.generate(batch["input_ids"][:1], max_new_tokens=5, do_sample=False)  # KV cache indices still valid
    assert out.shape == (1, 17)


def test_save_and_reload_keep_zeros_and_removed_blocks(tmp_path):
    model = tiny_llama()
    pr.apply_masks(model, pr.magnitude_masks(model, 0.5, scope="row"))
    blk.remove_blocks(model, [1])
    report = pr.sparsity_report(model)
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 3
    again = pr.sparsity_report(reloaded)
    assert again["per_matrix"] == report["per_matrix"]
    assert again["prunable_sparsity"] == pytest.approx(0.5)
    assert again["nonzero_parameters"] == report["nonzero_parameters"] < report["parameters"]


@pytest.mark.parametrize("train", ["lora", "weights"])
def test_masked_recovery_keeps_pruned_weights_at_zero(train):
    model = tiny_llama()
    masks = pr.magnitude_masks(model, 0.5, scope="matrix")
    pr.apply_masks(model, masks)
    batch = calib_batches(1)[0]
    with torch.no_grad():
        pruned_logits = model(**batch).logits
    before = {n: lin.weight.detach().clone() for n, lin in pr.prunable_linears(model).items()}
    linears = pr.prunable_linears(model)
    if train == "lora":
        params = add_masked_lora(model, linears, masks, r=4, alpha=8)
    else:
        params = add_masked_weights(model, linears, masks)
        assert sum(p.numel() for p in params) == sum(lin.weight.numel() for lin in linears.values())
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    with torch.no_grad():  # B starts at zero (or the weights are the pruned ones): nothing changes until training
        torch.testing.assert_close(model(**batch).logits, pruned_logits)
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    merge_masked_lora(model)
    assert all(p.requires_grad is False for p in model.parameters())
    for name, lin in pr.prunable_linears(model).items():
        assert type(lin).__name__ == "Linear"  # the parametrization is gone after merging
        assert torch.equal(lin.weight != 0, masks[name]), name
        assert not torch.equal(lin.weight, before[name])  # the kept weights did train


def test_masked_lora_weight_is_the_masked_sum_of_weight_and_scaled_delta():
    model = tiny_llama()
    masks = pr.magnitude_masks(model, 0.5, scope="row")
    pr.apply_masks(model, masks)
    name, lin = next(iter(pr.prunable_linears(model).items()))
    weight = lin.weight.detach().clone()
    add_masked_lora(model, {name: lin}, masks, r=4, alpha=8)
    delta = lin.parametrizations.weight[0]
    with torch.no_grad():
        delta.lora_A.normal_()
        delta.lora_B.normal_()
    expected = (weight + 2.0 * delta.lora_B.detach() @ delta.lora_A.detach()) * masks[name]  # alpha / r = 2
    torch.testing.assert_close(lin.weight.detach(), expected)


def test_distilled_recovery_moves_towards_the_unpruned_model_and_keeps_zeros():
    import copy

    from tuneforge.compress.distill import DistillLoss
    from tuneforge.compress.sections import KDSection

    dense = tiny_llama()
    model = copy.deepcopy(dense)
    masks = pr.wanda_prune(model, calib_batches(), 0.5)
    batch = calib_batches(1, seed=5)[0]
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = DistillLoss(model, dense, KDSection(ratio=1.0, tokens="all"), share_prefix=False)
    params = add_masked_lora(model, pr.prunable_linears(model), masks, r=4, alpha=8)
    opt = torch.optim.AdamW(params, lr=1e-2)
    kd = []
    for _ in range(5):
        total, n = loss(batch["input_ids"], batch["attention_mask"], labels)
        (total / n).backward()
        opt.step()
        opt.zero_grad()
        kd.append((total / n).item())
    assert kd[0] > 0 and kd[-1] < 0.7 * kd[0], kd
    assert all(p.grad is None for p in dense.parameters())  # the teacher is never trained
    merge_masked_lora(model)
    for name, lin in pr.prunable_linears(model).items():
        assert torch.equal(lin.weight != 0, masks[name]), name


def test_refit_with_another_method_is_a_config_error():
    from tuneforge.config import validate
    from tuneforge.recipes.prune import PruneConfig

    with pytest.raises(UserError, match="prune.refit needs prune.method: wanda"):
        validate(PruneConfig, {"prune": {"method": "magnitude", "refit": True}, "data": {"dev": {"path": "d.tsv"}}})


def test_existing_with_distilled_recovery_needs_a_teacher():
    from tuneforge.config import validate
    from tuneforge.recipes.prune import PruneConfig

    base = {"prune": {"method": "existing"}, "data": {"dev": {"path": "d.tsv"}, "train": {"path": "t.tsv"}}}
    with pytest.raises(UserError, match="needs recovery.teacher"):
        validate(PruneConfig, {**base, "recovery": {"enabled": True, "distill": True}})
    with pytest.raises(UserError, match="teacher_adapter needs recovery.teacher"):
        validate(PruneConfig, {**base, "recovery": {"enabled": True, "teacher_adapter": "runs/x/adapter"}})
    validate(PruneConfig, {**base, "recovery": {"enabled": True, "distill": False}})  # CE recovery needs none


@pytest.mark.parametrize("train", ["lora", "weights"])
def test_recovery_continues_on_a_pruned_run_with_the_dense_teacher(tiny_llama_dir, sentiment_tsv, tmp_path, train, capsys):
    """Stage 1 prunes and saves; stage 2 loads that model/, keeps exactly its zeros and distills from the
    unpruned model named by recovery.teacher (with a masked LoRA, or training the masked weights)."""
    import json

    from safetensors.torch import load_file

    from tuneforge.config import validate
    from tuneforge.recipes.prune import PruneConfig, prune

    common = {"task": {"name": "sentiment", "labels": ["negative", "positive"]}, "output_dir": str(tmp_path),
              "data": {split: {"path": str(sentiment_tsv), "text_column": "sentence"} for split in ("train", "dev")},
              "eval": {"limit": 2, "batch_size": 2}, "eval_before": False,
              "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-2, "max_seq_len": 64, "log_every": 1}}
    first = prune(validate(PruneConfig, {**common, "name": "s1", "model": str(tiny_llama_dir),
                                         "prune": {"method": "magnitude", "sparsity": 0.5, "scope": "row"}}))
    second = prune(validate(PruneConfig, {
        **common, "name": "s2", "model": str(first / "model"), "prune": {"method": "existing"},
        "recovery": {"enabled": True, "train": train, "r": 2, "alpha": 4, "distill": True, "teacher": str(tiny_llama_dir),
                     "kd": {"tokens": "all", "ratio": 1.0}}}))
    assert "50.0% of the block matrices' weights are zero and stay zero\n" in capsys.readouterr().out
    zeros = [json.loads((run / "sparsity.json").read_text())["per_matrix"] for run in (first, second)]
    assert zeros[0] == zeros[1] and set(zeros[0].values()) == {0.5}
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["method"] == "existing" and "sparsity_target" not in metrics
    assert metrics["recovery"]["steps"] == 2 and "recovered" in metrics
    block_weights = sum(t.numel() for k, t in load_file(first / "model" / "model.safetensors").items()
                        if "layers" in k and k.endswith("proj.weight"))
    assert (metrics["recovery"]["trainable_params"] == block_weights) == (train == "weights")
    before, after = (load_file(run / "model" / "model.safetensors") for run in (first, second))
    changed = [k for k in before if "layers" in k and k.endswith("proj.weight") and not torch.equal(before[k], after[k])]
    assert changed  # the kept weights did train
    assert all(torch.equal(before[k] == 0, after[k] == 0) for k in changed)


def test_existing_on_an_unpruned_model_says_nothing_is_kept_at_zero(capsys):
    from tuneforge.config import validate
    from tuneforge.recipes.prune import PruneConfig, prune_model

    cfg = validate(PruneConfig, {"prune": {"method": "existing"}, "data": {"dev": {"path": "d.tsv"}}})
    masks, details = prune_model(tiny_llama(), cfg, [])
    assert details == {} and all(bool(m.all()) for m in masks.values())
    assert "0.0% of the block matrices' weights are zero" in (out := capsys.readouterr().out)
    assert "this model is not pruned" in out


def test_a_second_wanda_step_keeps_the_first_steps_zeros():
    """prune.steps relies on this: zeros score 0, so pruning on to 50% prunes them again, plus new ones."""
    model = tiny_llama()
    first = pr.wanda_prune(model, calib_batches(seed=1), 0.25, refit=True)
    second = pr.wanda_prune(model, calib_batches(seed=2), 0.5, refit=True)
    for name, lin in pr.prunable_linears(model).items():
        assert not (second[name] & ~first[name]).any(), name  # nothing pruned in step 1 comes back
        assert (lin.weight == 0).float().mean().item() == pytest.approx(0.5)


def test_steps_need_an_unstructured_per_weight_method():
    from tuneforge.config import validate
    from tuneforge.recipes.prune import PruneConfig

    base = {"data": {"dev": {"path": "d.tsv"}, "train": {"path": "t.tsv"}}}
    for prune in ({"steps": 2, "pattern": "2:4"}, {"steps": 2, "method": "blocks"}):
        with pytest.raises(UserError, match="prune.steps: 2 needs prune.method wanda or magnitude"):
            validate(PruneConfig, {**base, "prune": prune})
    validate(PruneConfig, {**base, "prune": {"steps": 2, "method": "magnitude"}})


def test_each_step_prunes_further_on_a_fresh_sample_of_rows():
    from tuneforge.config import validate
    from tuneforge.recipes.prune import PruneConfig, step_configs

    base = {"data": {"dev": {"path": "d.tsv"}, "train": {"path": "t.tsv", "seed": 5}}}
    cfg = validate(PruneConfig, {**base, "prune": {"steps": 3, "sparsity": 0.6}})
    steps = step_configs(cfg)
    assert [s.prune.sparsity for s in steps] == pytest.approx([0.2, 0.4, 0.6])
    assert [s.data.train.seed for s in steps] == [5, 6, 7] and cfg.data.train.seed == 5  # cfg itself unchanged
    listed = validate(PruneConfig, {**base, "prune": {"steps": [0.25, 0.375, 0.5], "sparsity": 0.5}})
    assert [s.prune.sparsity for s in step_configs(listed)] == [0.25, 0.375, 0.5]
    for steps in ([0.25, 0.4], [0.3, 0.25, 0.5], [], 0):
        with pytest.raises(UserError, match="prune.steps"):
            validate(PruneConfig, {**base, "prune": {"steps": steps, "sparsity": 0.5}})


def test_pruning_in_steps_recovers_after_each_and_reports_every_step(tiny_llama_dir, sentiment_tsv, tmp_path):
    import json

    from tuneforge.config import validate
    from tuneforge.recipes.prune import PruneConfig, prune

    run = prune(validate(PruneConfig, {
        "name": "steps", "model": str(tiny_llama_dir), "output_dir": str(tmp_path),
        "task": {"name": "sentiment", "labels": ["negative", "positive"]},
        "data": {"train": {"path": str(sentiment_tsv), "text_column": "sentence", "shuffle": True, "seed": 3},
                 "dev": {"path": str(sentiment_tsv), "text_column": "sentence"}},
        "prune": {"method": "wanda", "sparsity": 0.5, "steps": 2, "refit": True, "calibration_rows": 4},
        "recovery": {"enabled": True, "train": "weights", "distill": True, "kd": {"tokens": "text"}},
        "eval": {"limit": 2, "batch_size": 2}, "eval_before": False,
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-2, "max_seq_len": 64, "log_every": 1}}))
    metrics = json.loads((run / "metrics.json").read_text())
    assert [s["sparsity"] for s in metrics["steps"]] == [0.25, 0.5]
    assert all({"pruned", "recovered", "recovery"} <= set(s) for s in metrics["steps"])
    assert metrics["recovered"] == metrics["steps"][-1]["recovered"] and metrics["prunable_sparsity"] == 0.5
    assert set(json.loads((run / "sparsity.json").read_text())["per_matrix"].values()) == {0.5}
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in losses] == [1, 2, 3, 4]  # one curve: step 2's recovery counts on
    assert "recovered 25.0%" in (run / "report.md").read_text()


def recovery_run(tiny_llama_dir, sentiment_tsv, tmp_path, **train) -> dict:
    """A magnitude prune with a 3-step recovery of the masked weights on the tiny model, as a config mapping."""
    return {"model": str(tiny_llama_dir), "output_dir": str(tmp_path),
            "task": {"name": "sentiment", "labels": ["negative", "positive"]},
            "data": {split: {"path": str(sentiment_tsv), "text_column": "sentence"} for split in ("train", "dev")},
            "prune": {"method": "magnitude", "sparsity": 0.5}, "recovery": {"enabled": True, "train": "weights"},
            "eval": {"limit": 2, "batch_size": 2}, "eval_before": False,
            "train": {"max_steps": 3, "batch_size": 2, "lr": 1e-2, "max_seq_len": 64, **train}}


def ctrl_c_on_call(monkeypatch, name: str, call: int, cfg) -> None:
    """prune(cfg) with the training loop's `name` pressed Ctrl-C on at its call-th call; it must end Interrupted."""
    from tuneforge.recipes.prune import prune
    from tuneforge.training import loop as training
    from tuneforge.training.loop import Interrupted

    original, calls = getattr(training, name), []

    def pressed(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, name, pressed)
    with pytest.raises(Interrupted):
        prune(cfg)
    monkeypatch.setattr(training, name, original)


def test_an_interrupted_recovery_resumes_with_the_command_it_prints(tiny_llama_dir, sentiment_tsv, tmp_path, capsys, monkeypatch):
    """Ctrl-C in a recovery saves a checkpoint and prints `tuneforge prune <config> train.resume=...`; running
    that gives the same model as an uninterrupted run."""
    import re

    from safetensors.torch import load_file

    from tuneforge.config import validate
    from tuneforge.recipes.prune import PruneConfig, prune

    base = recovery_run(tiny_llama_dir, sentiment_tsv, tmp_path)
    full = prune(validate(PruneConfig, {**base, "name": "full"}))
    ctrl_c_on_call(monkeypatch, "collate", 2, validate(PruneConfig, {**base, "name": "cut"}))  # in step 2
    hint = re.search(r"resume with: tuneforge prune <config> train\.resume=(\S+)", capsys.readouterr().err)
    assert hint, "the hint names prune, not finetune"
    resumed = prune(validate(PruneConfig, {**base, "name": "resumed", "train": {**base["train"], "resume": hint[1]}}))
    assert resumed == tmp_path / "cut", "a resumed run finishes in the interrupted run's folder, not a new one"
    before, after = (load_file(run / "model" / "model.safetensors") for run in (full, resumed))
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(UserError, match="a run in steps cannot resume"):
        validate(PruneConfig, {**base, "prune": {"method": "magnitude", "steps": 2},
                               "train": {**base["train"], "resume": hint[1]}})


def test_ctrl_c_during_a_periodic_save_checkpoints_the_steps_taken(tiny_llama_dir, sentiment_tsv, tmp_path, capsys,
                                                                   monkeypatch):
    """Interrupted while step 1's checkpoint is written: the saved checkpoint is step-1, holding 1 step (it was
    named after the loop index, step-0, and a resume replayed a batch); resuming matches an uninterrupted run."""
    import json
    import re

    from safetensors.torch import load_file

    from tuneforge.config import validate
    from tuneforge.recipes.prune import PruneConfig, prune

    base = recovery_run(tiny_llama_dir, sentiment_tsv, tmp_path, save_every=1)
    full = prune(validate(PruneConfig, {**base, "name": "full"}))
    ctrl_c_on_call(monkeypatch, "save_checkpoint", 1, validate(PruneConfig, {**base, "name": "cut"}))
    err = capsys.readouterr().err
    assert "interrupted after step 1" in err
    ckpt = Path(re.search(r"train\.resume=(\S+)", err)[1])
    assert ckpt.name == "step-1" and json.loads((ckpt / "step.json").read_text())["step"] == 1
    resumed = prune(validate(PruneConfig, {**base, "name": "cut", "train": {**base["train"], "resume": str(ckpt)}}))
    before, after = (load_file(run / "model" / "model.safetensors") for run in (full, resumed))
    assert all(torch.equal(before[k], after[k]) for k in before)
