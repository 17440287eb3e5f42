"""`tuneforge runs`: run folders built here (complete, interrupted, failed, running, corrupt, each verb's
metrics.json) read back into the table; sort and filter; `runs compare`; failed.json from a failing command."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tuneforge import runs
from tuneforge.errors import UserError
from tuneforge.report.runs_table import (
    filter_runs,
    human_seconds,
    infer_verb,
    listing,
    read_runs,
    sort_runs,
    table_rows,
)

HOUR = 3600


def make_run(root: Path, name: str, config: dict | str, files: dict | None = None, *, age: float = 2 * HOUR,
             took: float = 120) -> Path:
    """runs/<name> with config.yaml written `age` seconds ago and every other file `took` seconds after it."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    for rel, content in (files or {}).items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):  # jsonl rows
            content = "".join(json.dumps(row) + "\n" for row in content)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    start = time.time() - age
    for dirpath, dirs, names in os.walk(folder):
        for entry in names + dirs:
            os.utime(os.path.join(dirpath, entry), (start + took, start + took))
    os.utime(folder / "config.yaml", (start, start))
    os.utime(folder, (start, start))
    return folder


FINETUNE = {"name": "ft", "model": "smollm2-135m-instruct", "task": {"name": "sentiment"}, "method": "lora",
            "lora": {"r": 16}, "train": {"lr": 2e-4, "epochs": 1.0}, "data": {"train": {"path": "t.tsv"}}}
LOG = [{"step": s, "loss": 1.0 / s, "tokens_per_second": 50.0 + s} for s in (1, 2, 3)]


@pytest.fixture
def folder_of_runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # recipes/ is looked up here for a resume command
    root = tmp_path / "runs"
    make_run(root, "ft", {**FINETUNE, "_verb": "finetune"}, {
        "metrics.jsonl": LOG,
        "checkpoints/step-2/step.json": {"step": 2},  # save_every: a complete run may have checkpoints
        "metrics.json": {"task": "sentiment", "method": "lora", "primary_metric": "accuracy",
                         "before": {"accuracy": 0.5, "macro_f1": 0.4}, "after": {"accuracy": 0.8, "macro_f1": 0.79},
                         "train": {"tokens_per_second": 400.0, "seconds": 100.0}}}, took=125)
    make_run(root, "ft-int", {**FINETUNE, "name": "ft", "train": {"lr": 1e-4},
                              "_command": "tuneforge finetune r.yaml train.lr=1e-4 train.resume=latest"}, {
        "metrics.jsonl": LOG, "metrics_before.json": {"accuracy": 0.5},
        "checkpoints/step-1/step.json": {"step": 1}, "checkpoints/step-3/step.json": {"step": 3}})
    make_run(root, "ft-failed", {**FINETUNE, "name": "ft-failed", "_verb": "finetune"}, {
        "metrics.jsonl": LOG[:1],
        "failed.json": {"error": "data.dev: 3 rows have no label\n  row 4\n  row 9", "type": "UserError",
                        "command": "tuneforge finetune f.yaml"}})
    make_run(root, "cls", {**FINETUNE, "name": "cls", "head": "classifier", "method": "full",
                           "model": "answerdotai/ModernBERT-base"}, {
        "metrics.json": {"task": "sentiment", "method": "full", "primary_metric": "accuracy", "before": None,
                         "after": {"accuracy": 0.9}, "train": {"tokens_per_second": 900.0}}})
    make_run(root, "q8", {"name": "q8", "model": "m", "task": {"name": "sentiment"}, "method": "int8_weight_only",
                          "group_size": None, "parity": {"enabled": True}}, {
        "metrics.json": {"method": "int8_weight_only", "task": "sentiment", "primary_metric": "accuracy",
                         "before": {"accuracy": 0.7}, "after": {"accuracy": 0.69},
                         "speed_after": {"decode_tok_s": 33.0}}})
    make_run(root, "ev", {"name": "ev", "model": "m", "task": {"name": "translation"}, "data": {}, "eval": {}},
             {"metrics.json": {"task": "translation", "strategy": "zero_shot", "metrics": {"bleu": 12.5}}})
    make_run(root, "broken", {**FINETUNE, "name": "broken"}, {"metrics.json": "{not json"})
    make_run(root, "bad-yaml", "name: [unclosed\n")
    make_run(root, "live", {**FINETUNE, "name": "live"}, {"metrics.jsonl": LOG}, age=30, took=20)
    make_run(root, "killed", {**FINETUNE, "name": "killed"}, {"metrics.jsonl": LOG[:2]})
    make_run(root, "stopped", {**FINETUNE, "name": "stopped", "_verb": "finetune", "_command": "tuneforge finetune s.yaml"},
             {"metrics.jsonl": LOG, "checkpoints/step-3/step.json": {"step": 3},
              "interrupted.json": {"time": "now", "command": "tuneforge finetune s.yaml"}}, age=30, took=20)  # just now
    (root / "inspect").mkdir()  # not a run folder: `inspect --attention` writes PNGs here
    (root / "inspect" / "m-attention.png").write_bytes(b"png")
    (root / ".x.tmp").mkdir()  # a folder being written
    (root / ".x.tmp" / "config.yaml").write_text("name: x\n")
    make_run(root / "exp1", "nested", {**FINETUNE, "name": "nested", "_verb": "finetune"})
    return root


def by_name(found):
    return {r.name: r for r in found}


def test_each_run_folder_is_read_with_its_status(folder_of_runs):
    found = by_name(read_runs(folder_of_runs))
    assert set(found) == {"ft", "ft-int", "ft-failed", "cls", "q8", "ev", "broken", "bad-yaml", "live", "killed",
                          "stopped", "exp1/nested"}
    ft = found["ft"]
    assert (ft.status, ft.verb, ft.task, ft.method, ft.metric, ft.before, ft.after, ft.tokens_s) == (
        "complete", "finetune", "sentiment", "lora", "accuracy", 0.5, 0.8, 400.0)
    assert ft.time == pytest.approx(125, abs=1) and ft.resume is None

    interrupted = found["ft-int"]
    assert (interrupted.status, interrupted.verb, interrupted.step, interrupted.before) == ("interrupted", "finetune", 3, 0.5)
    checkpoint = folder_of_runs / "ft-int" / "checkpoints" / "step-3"
    assert interrupted.resume == f"tuneforge finetune r.yaml train.lr=1e-4 train.resume={checkpoint}"
    assert interrupted.tokens_s == 53.0  # the last logged step's

    failed = found["ft-failed"]
    assert failed.status == "failed" and failed.why.startswith("data.dev: 3 rows have no label")
    assert failed.failed_command == "tuneforge finetune f.yaml" and failed.resume is None

    assert (found["cls"].verb, found["cls"].method, found["cls"].before, found["cls"].after) == (
        "finetune", "full (head)", None, 0.9)
    assert (found["q8"].verb, found["q8"].before, found["q8"].after, found["q8"].tokens_s) == ("quantize", 0.7, 0.69, 33.0)
    # evaluate's older metrics.json has no primary_metric: the task pack's (translation: bleu)
    assert (found["ev"].verb, found["ev"].metric, found["ev"].after) == ("evaluate", "bleu", 12.5)
    assert found["broken"].status == "unreadable" and "metrics.json is not valid JSON" in found["broken"].why
    assert found["bad-yaml"].status == "unreadable" and "config.yaml is not valid YAML (line" in found["bad-yaml"].why
    assert found["live"].status == "running" and found["live"].step == 3
    assert found["killed"].status == "incomplete" and found["killed"].step == 2
    stopped = found["stopped"]  # Ctrl-C a moment ago: its marker says so, however recent its files
    assert (stopped.status, stopped.step, stopped.time) == ("interrupted", 3, pytest.approx(20, abs=1))
    assert stopped.resume == f"tuneforge finetune s.yaml train.resume={folder_of_runs / 'stopped' / 'checkpoints' / 'step-3'}"
    assert found["exp1/nested"].status == "incomplete"


def test_the_printed_table_and_notes(folder_of_runs):
    text = listing(sort_runs(read_runs(folder_of_runs), "name"), folder_of_runs)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 0.5 → 0.8 " in rows["ft"] and "| 2m 05s " in rows["ft"] and "| complete " in rows["ft"]
    assert re.search(r"\|\s+400 \|", rows["ft"])  # tokens/s, right-aligned
    assert "interrupted at step 3" in rows["ft-int"]
    assert "unreadable: metrics.json is not valid JSON" in rows["broken"]
    assert "12 runs in" in text and ": 4 complete, 2 interrupted, 1 failed, 1 running, 2 incomplete, 2 unreadable" in text
    notes = text.split("interrupted; resume with:")[1]
    assert "ft-int: tuneforge finetune r.yaml train.lr=1e-4 train.resume=" in notes
    assert "ft-failed: data.dev: 3 rows have no label\n    row 4\n    row 9\n    ran: tuneforge finetune f.yaml" in notes


def test_an_old_run_resumes_with_the_shipped_recipe_of_its_name(folder_of_runs):
    make_run(folder_of_runs, "old", {**FINETUNE, "name": "sst2-lora"}, {"checkpoints/step-5/step.json": {"step": 5}})
    make_run(folder_of_runs, "older", {**FINETUNE, "name": "mine"}, {"checkpoints/step-5/step.json": {"step": 5}})
    Path("recipes").mkdir()
    Path("recipes/sst2_lora.yaml").write_text("# tuneforge finetune recipes/sst2_lora.yaml\nname: sst2-lora\n")
    found = by_name(read_runs(folder_of_runs))
    assert found["old"].resume == f"tuneforge finetune recipes/sst2_lora.yaml " \
                                  f"train.resume={folder_of_runs / 'old' / 'checkpoints' / 'step-5'}"
    assert found["older"].resume.startswith("tuneforge finetune RECIPE.yaml train.resume=")
    assert "RECIPE.yaml: the recipe the run was started with" in listing(list(found.values()), folder_of_runs)


def test_a_prune_steps_run_has_no_resume_command(tmp_path):
    config = {"name": "p", "task": {"name": "sentiment"}, "prune": {"method": "wanda", "steps": 2}}
    make_run(tmp_path, "p", config, {"checkpoints/step-4/step.json": {"step": 4}})
    make_run(tmp_path, "p1", {**config, "prune": {"method": "wanda"}}, {"checkpoints/step-4/step.json": {"step": 4}})
    found = by_name(read_runs(tmp_path))
    assert found["p"].status == "interrupted" and found["p"].resume is None
    assert found["p1"].resume.startswith("tuneforge prune RECIPE.yaml train.resume=")


def test_each_verbs_metrics_map_to_before_and_after(tmp_path):
    base = {"model": "m", "task": {"name": "sentiment"}, "data": {}}
    make_run(tmp_path, "kd", {**base, "name": "kd", "student": {"keep_blocks": "first:4"}, "kd": {}},
             {"metrics.json": {"task": "sentiment", "primary_metric": "accuracy", "teacher": {"accuracy": 0.9},
                               "before": {"accuracy": 0.3}, "after": {"accuracy": 0.7},
                               "train": {"tokens_per_second": 10.0}}})
    make_run(tmp_path, "pr", {**base, "name": "pr", "prune": {"method": "wanda", "sparsity": 0.5}},
             {"metrics.json": {"task": "sentiment", "primary_metric": "accuracy", "before": {"accuracy": 0.8},
                               "pruned": {"accuracy": 0.6}, "recovered": {"accuracy": 0.75},
                               "recovery": {"tokens_per_second": 20.0}}})
    make_run(tmp_path, "pe", {**base, "name": "pe", "task": {"name": "chat"}, "strategies": None, "shot_seed": 0},
             {"metrics.json": {"task": "chat", "primary_metric": "perplexity",
                               "strategies": {"zero_shot": {"perplexity": 9.0}, "few_shot": {"perplexity": 7.5}}}})
    make_run(tmp_path, "cl", {"name": "cl", "model": "m", "stages": [{"name": "chat", "task": {"name": "chat"}},
                                                                   {"name": "sst2"}],
                              "continual": {"strategy": ["sequential", "adapter_per_task"]}},
             {"metrics.json": {"strategies": [
                 {"strategy": "sequential", "average final": 0.6, "train s": 100.0, "tokens": 3000},
                 {"strategy": "adapter_per_task (routed)", "average final": 0.7, "train s": 50.0, "tokens": 3000},
                 {"strategy": "adapter_per_task (merged)", "average final": 0.65, "train s": 50.0, "tokens": 3000}]},
              "sequential/ledger.json": {}, "sequential/metrics.json": {
                  "strategy": "sequential", "ledgers": {"sequential": {"summary": {"average_final": 0.6}}},
                  "stage_runs": [{"tokens": 3000, "seconds": 100.0}]},
              "adapter_per_task/ledger.json": {}})
    make_run(tmp_path, "cmp", {**base, "name": "cmp", "models": [{"name": "a"}, {"name": "b"}]},
             {"compare.json": {"task": "sentiment", "metric": "accuracy", "rows": []}})
    make_run(tmp_path, "exp", {**base, "name": "exp", "format": "gguf", "gguf_type": "q4_k_m"}, {"report.md": "#"})
    make_run(tmp_path, "expa", {**base, "name": "expa", "format": "gguf_adapter", "gguf_type": "q4_1"}, {"report.md": "#"})
    found = by_name(read_runs(tmp_path))
    assert (found["kd"].verb, found["kd"].method, found["kd"].before, found["kd"].after) == ("distill", "kd first:4", 0.3, 0.7)
    assert (found["pr"].method, found["pr"].before, found["pr"].after, found["pr"].tokens_s) == ("wanda 50%", 0.8, 0.75, 20.0)
    assert (found["pe"].verb, found["pe"].method, found["pe"].after) == ("prompt-eval", "best: few_shot", 7.5)  # lower is better
    cl = found["cl"]
    assert (cl.verb, cl.task, cl.method, cl.after, cl.status) == ("continual", "chat→sst2", "adapter_per_task (routed) (best of 2)",
                                                                 0.7, "complete")
    assert cl.tokens_s == pytest.approx(6000 / 150)  # routed and merged are one training
    assert "sentiment" in cl.tasks and "sst2" in cl.tasks
    assert (found["cmp"].verb, found["cmp"].status, found["cmp"].method) == ("compare", "complete", "2 models")
    assert (found["exp"].verb, found["exp"].status, found["exp"].method) == ("export", "complete", "gguf q4_k_m")
    assert found["expa"].method == "gguf_adapter q4_1"  # the base's type

    nested = by_name(read_runs(tmp_path, nested=True))
    assert nested["cl/sequential"].status == "complete" and nested["cl/sequential"].after == 0.6
    assert nested["cl/sequential"].method == "sequential"
    assert nested["cl/adapter_per_task"].status == "incomplete"
    assert "cl/sequential" not in by_name(read_runs(tmp_path))

    from tuneforge.report.runs_compare import compare_runs

    text = compare_runs(tmp_path, ["cl/sequential", "cl"], tmp_path / "cl.png")  # a strategy folder by its path
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "continual.strategy" in rows and "| sequential " in rows["method"] and "unreadable" not in text


@pytest.mark.parametrize("config, verb", [
    ({"stages": [], "continual": {}}, "continual"), ({"models": []}, "compare"), ({"format": "gguf", "gguf_type": "q8_0"}, "export"),
    ({"student": {}, "kd": {}}, "distill"), ({"prune": {}}, "prune"), ({"method": "gguf_q8_0", "parity": {}, "group_size": None}, "quantize"),
    ({"shot_seed": 0, "strategies": None}, "prompt-eval"), ({"head": "classifier", "lora": {}}, "finetune"),
    ({"method": "lora", "lora": {}, "train": {}}, "finetune"), ({"task": {}, "data": {}, "eval": {}}, "evaluate"), ({}, None),
])
def test_the_verb_of_a_config_without_one(config, verb):
    assert infer_verb({"name": "x", "model": None, **config}) == verb


def test_sort_and_filter(folder_of_runs):
    found = read_runs(folder_of_runs)
    assert [r.name for r in sort_runs(found, "after")][:4] == ["ev", "cls", "ft", "q8"]  # largest first
    assert [r.name for r in sort_runs(found, "-after")][:4] == ["q8", "ft", "cls", "ev"]
    assert [r.name for r in sort_runs(found, "after", reverse=True)][:4] == ["q8", "ft", "cls", "ev"]
    assert all(r.after is None for r in sort_runs(found, "-after")[4:])  # no value: last either way
    assert [r.name for r in sort_runs(found, "tokens/s")][:2] == ["cls", "ft"]
    assert [r.name for r in sort_runs(found, "name")][:3] == ["bad-yaml", "broken", "cls"]
    assert {r.name for r in sort_runs(found, "started")[-2:]} == {"live", "stopped"}  # started 30 s ago
    assert sort_runs(found, "started")[0].name != "live" and sort_runs(found, "-started")[0].name in ("live", "stopped")
    with pytest.raises(UserError, match=r"--sort speed: not a column; sort by one of started, name"):
        sort_runs(found, "speed")

    assert {r.name for r in filter_runs(found, verb="quantize")} == {"q8"}
    assert {r.name for r in filter_runs(found, task="translation")} == {"ev"}
    assert {r.name for r in filter_runs(found, status="interrupted")} == {"ft-int", "stopped"}
    assert {r.name for r in filter_runs(found, verb="finetune", status="complete")} == {"ft", "cls"}
    with pytest.raises(UserError, match="--status done: not a status; use one of complete, interrupted"):
        filter_runs(found, status="done")


def test_table_rows_and_times():
    assert [human_seconds(s) for s in (None, 4.4, 125, 3 * HOUR + 61)] == ["", "4s", "2m 05s", "3h 01m"]
    assert table_rows([]) == []


# -- the CLI ------------------------------------------------------------------------------------------------

def test_tuneforge_runs_prints_the_table_and_exits_0(folder_of_runs, capsys):
    from tuneforge.cli import main

    assert main(["runs", str(folder_of_runs), "--verb", "finetune", "--sort=-after"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "run" and lines[1].split("|")[1].strip() == "ft"
    assert "cls" in lines[2] and "q8" not in out
    assert "(of 12)" in out and "resume with:" in out

    assert main(["runs", "--dir", str(folder_of_runs), "--verb", "nope"]) == 0
    assert "--verb values here: evaluate, finetune, quantize" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["runs", "nowhere"], "error: nowhere not found: pass the folder that holds your run folders"),
    (["runs", "runs", "--sort", "speed"], "error: --sort speed: not a column"),
    (["runs", "a", "b"], "error: runs: one folder at most, got 2 (a b); to set runs side by side: `tuneforge runs compare a b`"),
    (["runs", "compare", "ft"], "error: runs compare: name two or more runs"),
    (["runs", "compare", "ft", "zzz"], "error: run 'zzz' not found: no run folder runs/zzz (runs in runs: bad-yaml, broken"),
])
def test_bad_input_is_one_line_and_exit_2(folder_of_runs, capsys, argv, message):
    from tuneforge.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


def test_runs_compare_prints_differences_and_metrics_and_writes_one_chart(folder_of_runs, tmp_path, capsys):
    from tuneforge.cli import main

    chart = tmp_path / "charts" / "ab.png"
    assert main(["runs", "compare", "ft", "ft-int", str(folder_of_runs / "q8"), "--out", str(chart)]) == 0
    out = capsys.readouterr().out
    diffs, metrics = out.split("metrics:")
    diffs = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]] for line in diffs.splitlines()
             if line.startswith("| ")}
    assert diffs["config key"] == ["ft", "ft-int", str(folder_of_runs / "q8")]
    assert diffs["_verb"] == ["finetune", "(absent)", "(absent)"] and diffs["group_size"] == ["(absent)", "(absent)", "null"]
    assert diffs["model"] == ["smollm2-135m-instruct", "smollm2-135m-instruct", "m"]
    assert "task" not in diffs and "task.name" not in diffs  # the same in all three
    assert diffs["train"][2] == "(absent)" and "train.lr" not in diffs  # a section one run lacks: one row
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]] for line in metrics.splitlines()
            if line.startswith("| ")}
    assert rows["status"] == ["complete", "interrupted", "complete"]
    assert rows["after"] == ["0.8", "", "0.69"] and rows["before.macro_f1"] == ["0.4", "", ""]
    assert rows["speed_after.decode_tok_s"] == ["", "", "33"]
    assert f"chart: {chart}" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


def test_config_differences_go_down_to_the_keys_that_differ(folder_of_runs):
    from tuneforge.report.runs_compare import config_differences

    found = by_name(read_runs(folder_of_runs))
    rows = {r["config key"]: (r["a"], r["b"]) for r in config_differences([found["ft"], found["ft-int"]], ["a", "b"])}
    assert rows["train.lr"] == ("0.0002", "0.0001") and rows["train.epochs"] == ("1", "(absent)")
    assert "name" not in rows  # both configs are named ft
    assert "train" not in rows and "data.train.path" not in rows


def test_identical_configs_say_so(tmp_path, capsys):
    from tuneforge.report.runs_compare import compare_runs

    for name in ("a", "b"):
        make_run(tmp_path, name, FINETUNE)
    text = compare_runs(tmp_path, ["a", "b"], tmp_path / "c.png")
    assert "(none: the configs are the same)" in text and (tmp_path / "c.png").exists()


# -- failed.json and the recorded verb ----------------------------------------------------------------------

@pytest.fixture
def fresh_run_state(monkeypatch):
    monkeypatch.setattr(runs, "_started", [])
    monkeypatch.setattr(runs, "_worked", [])
    monkeypatch.setattr(runs, "command_line", None)
    monkeypatch.setattr(runs, "verb", None)


def cfg_for(tmp_path, name="r", **train):
    return SimpleNamespace(output_dir=str(tmp_path), name=name, train=SimpleNamespace(**train),
                           model_dump=lambda mode: {"name": name})


def test_a_failure_is_written_into_each_run_folder_with_work(tmp_path, fresh_run_state, monkeypatch):
    monkeypatch.setattr(runs, "command_line", ["tuneforge", "finetune", "x.yaml"])
    empty = runs.new_run_dir(cfg_for(tmp_path))
    worked = runs.new_run_dir(cfg_for(tmp_path))
    (worked / "metrics.jsonl").write_text('{"step": 1}\n')
    assert runs.end_stopped_command(UserError("data.dev: no rows")) == [worked]
    assert not empty.exists()
    failure = json.loads((worked / "failed.json").read_text())
    assert (failure["error"], failure["type"], failure["command"]) == ("data.dev: no rows", "UserError", "tuneforge finetune x.yaml")
    assert failure["time"][:4].isdigit()
    assert runs.end_stopped_command(RuntimeError("later")) == []  # only the folders of the command that failed


def test_ctrl_c_writes_interrupted_and_a_resumed_run_drops_the_old_marker(tmp_path, fresh_run_state):
    folder = runs.new_run_dir(cfg_for(tmp_path))
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    assert runs.end_stopped_command(None) == [folder] and not (folder / "failed.json").exists()
    assert set(json.loads((folder / "interrupted.json").read_text())) == {"time", "command"}
    (folder / "failed.json").write_text("{}")
    resumed = runs.run_dir_for(cfg_for(tmp_path, resume=str(folder / "checkpoints" / "step-1")))
    assert resumed == folder  # running again: neither failed nor interrupted
    assert not (folder / "failed.json").exists() and not (folder / "interrupted.json").exists()
    assert runs.end_stopped_command(ValueError("boom")) == [folder]  # a resumed run that fails is recorded too
    assert json.loads((folder / "failed.json").read_text())["error"] == "ValueError: boom"


def test_config_yaml_records_the_verb_and_command(tmp_path, fresh_run_state, monkeypatch):
    assert "_verb" not in runs.resolved_config_yaml(cfg_for(tmp_path))  # called from Python: nothing to record
    monkeypatch.setattr(runs, "verb", "finetune")
    monkeypatch.setattr(runs, "command_line", ["tuneforge", "finetune", "my recipe.yaml", "train.lr=1e-4"])
    data = yaml.safe_load(runs.resolved_config_yaml(cfg_for(tmp_path)))
    assert data["_verb"] == "finetune" and data["_command"] == "tuneforge finetune 'my recipe.yaml' train.lr=1e-4"


@pytest.fixture
def failing_verb(monkeypatch, tmp_path):
    """A verb that makes a run folder, logs a step, then fails the way `how` says."""
    from tuneforge import cli, cli_args

    module = types.ModuleType("failing_verb_for_test")

    def run(args):
        folder = runs.new_run_dir(cfg_for(tmp_path / "runs", name="boom"))
        (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
        raise {"user": UserError("eval.limit: too many"), "crash": RuntimeError("CUDA out of memory"),
               "ctrl-c": KeyboardInterrupt()}[args.overrides[0]]

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.VERBS, "boom", (module.__name__, "fails", cli_args.recipe))
    monkeypatch.setattr(runs, "_started", [])
    monkeypatch.setattr(runs, "_worked", [])
    return tmp_path / "runs" / "boom"


@pytest.mark.parametrize("how, code, status", [("user", 2, "failed"), ("crash", None, "failed"),
                                               ("ctrl-c", 130, "interrupted")])
def test_a_failing_command_marks_its_run_failed(failing_verb, capsys, how, code, status):
    from tuneforge.cli import main

    if code is None:
        with pytest.raises(RuntimeError):
            main(["boom", "x.yaml", how])
    else:
        assert main(["boom", "x.yaml", how]) == code
    config = yaml.safe_load((failing_verb / "config.yaml").read_text())
    assert config["_verb"] == "boom" and config["_command"] == f"tuneforge boom x.yaml {how}"
    assert (failing_verb / "failed.json").exists() == (status == "failed")
    assert (failing_verb / "interrupted.json").exists() == (status == "interrupted")
    old = time.time() - 2 * HOUR
    for path in [failing_verb, *failing_verb.iterdir()]:
        os.utime(path, (old, old))
    (run,) = read_runs(failing_verb.parent)
    assert run.status == status
    if how == "crash":
        assert run.why == "RuntimeError: CUDA out of memory"
    if how == "ctrl-c":  # no checkpoint: nothing to resume from, and the listing says so
        assert run.step == 1 and run.resume is None
        assert "boom: no checkpoint it can resume from: run the command again" in listing([run], failing_verb.parent)
