"""Bad input through the real CLI: one clear message, exit code 2, no traceback, no complete-looking run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-m", "tuneforge.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=ENV)


def write_recipe(tmp_path, model, data, **extra):
    lines = [f"model: {model}", "dtype: float32", f"output_dir: {tmp_path / 'runs'}", "name: r",
             "task: {name: sentiment}",
             f"data:\n  train: {{path: {data}, text_column: sentence, label_column: label}}",
             "lora: {r: 2, alpha: 4, dropout: 0.0}", "train: {bf16: 'false', batch_size: 2, log_every: 1}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("override, expected", [
    (["train.lrr=1"], "train.lrr: unknown key (did you mean 'lr'?)"),
    (["train.epochs=lots"], "train.epochs: Input should be a valid number"),
    (["data.train.path=nope.tsv"], "nope.tsv"),
    (["data.train.text_column=review"], "review"),
    (["model=no-such-model"], "model 'no-such-model' not found; tried"),
    (["data.train.start=100"], "no rows"),
])
def test_bad_input_gives_one_message_and_exit_2(tiny_llama_dir, sentiment_tsv, tmp_path, override, expected):
    recipe = write_recipe(tmp_path, tiny_llama_dir, sentiment_tsv)
    proc = run_cli("finetune", str(recipe), *override)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "runs").glob("*/metrics.json"))


def test_ctrl_c_leaves_a_resumable_checkpoint(tiny_llama_dir, sentiment_tsv, tmp_path):
    recipe = write_recipe(tmp_path, tiny_llama_dir, sentiment_tsv, eval_before="false")
    proc = subprocess.Popen([*CLI, "finetune", str(recipe), "train.epochs=2000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = tmp_path / "runs" / "r" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    checkpoints = list((tmp_path / "runs" / "r" / "checkpoints").glob("step-*"))
    assert checkpoints and "train.resume=" in err + _
    step = json.loads((checkpoints[0] / "step.json").read_text())["step"]
    assert step >= 3 and not (tmp_path / "runs" / "r" / "metrics.json").exists()
    # `tuneforge runs` reads it back: interrupted at that step, resumed by the very command the Ctrl-C printed
    listed = run_cli("runs", str(tmp_path / "runs"))
    assert listed.returncode == 0, listed.stderr[-2000:]
    printed = next(line for line in err.splitlines() if line.startswith("resume with: ")).removeprefix("resume with: ")
    assert f"interrupted at step {step}" in listed.stdout and f"  r: {printed}" in listed.stdout


def test_missing_adapter_names_the_recipe_that_makes_it(tmp_path, monkeypatch):
    from pathlib import Path

    from tuneforge.errors import UserError
    from tuneforge.models.loading import attach_adapter

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "sst2_lora.yaml").write_text(
        "# Run:\n#   tuneforge finetune recipes/sst2_lora.yaml\nname: sst2-lora   # the run folder\n")
    (tmp_path / "not-an-adapter").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        attach_adapter(None, "runs/sst2-lora/adapter")
    assert str(err.value) == ("adapter 'runs/sst2-lora/adapter' does not exist: pass a run's adapter/ folder, or make "
                              "this one first: `tuneforge finetune recipes/sst2_lora.yaml` writes runs/sst2-lora/adapter")
    with pytest.raises(UserError, match="'runs/other/adapter' does not exist: pass a run's adapter/ folder$"):
        attach_adapter(None, str(Path("runs/other/adapter")))
    with pytest.raises(UserError, match="'not-an-adapter' has no adapter_config.json"):
        attach_adapter(None, "not-an-adapter")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="^adapter 'a-file' is a file, not a folder: pass a run's adapter/ folder$"):
        attach_adapter(None, "a-file")
    from tuneforge.models import resolve_model

    (tmp_path / "recipes" / "prune_x.yaml").write_text(
        "# Run:\n#   tuneforge prune recipes/prune_x.yaml\nname: pruned\nprune: {method: wanda}\n")
    with pytest.raises(UserError, match=r"Make it first: `tuneforge prune recipes/prune_x.yaml` writes "
                                        r"runs/pruned/model\.$"):
        resolve_model("runs/pruned/model")  # a pruned or distilled model/ folder
    with pytest.raises(UserError, match=r"Run `tuneforge models` to list known models\.$"):
        resolve_model("runs/sst2-lora/model")  # that LoRA recipe writes adapter/, not model/


def test_every_verb_words_a_bad_adapter_alike(tmp_path):
    """deploy names its adapter NAME=PATH and compare prefixes its row; the rest is attach_adapter's message."""
    from tuneforge.deploy.bundle import parse_adapters
    from tuneforge.errors import UserError
    from tuneforge.recipes.compare import ModelRow, check_rows

    (tmp_path / "empty").mkdir()
    expected = f"adapter 'support={tmp_path / 'empty'}' has no adapter_config.json: pass a run's adapter/ folder"
    with pytest.raises(UserError) as err:
        parse_adapters([f"support={tmp_path / 'empty'}"])
    assert str(err.value) == expected
    with pytest.raises(UserError) as err:
        check_rows([ModelRow(name="a", path="smollm2-135m-instruct", adapter=str(tmp_path / "empty"))])
    assert f"  models[0] (a): adapter '{tmp_path / 'empty'}' has no adapter_config.json: pass a run's adapter/ folder" \
        in str(err.value).splitlines()


def test_torchao_start_up_notices_are_dropped():
    """peft imports torchao and bitsandbytes, which log notices no user can act on; the CLI drops exactly those."""
    def stderr_of(code):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env=ENV).stderr

    plain = stderr_of("import peft")
    if "is an Enum subclass" not in plain and "Failed to load" not in plain:
        pytest.skip("the installed torchao prints neither notice")
    quiet = stderr_of("from tuneforge.quiet import drop_known_import_notices as d; d(); import peft; "
                      "import logging; logging.getLogger('torchao').warning('kept: other torchao warnings')")
    assert "is an Enum subclass" not in quiet and "Failed to load" not in quiet
    assert "kept: other torchao warnings" in quiet


def compress_recipe(tmp_path, model, data, verb_lines: list[str]):
    lines = [f"model: {model}", "dtype: float32", f"output_dir: {tmp_path / 'runs'}", "name: r",
             "task: {name: sentiment}",
             f"data:\n  train: {{path: {data}, text_column: sentence, label_column: label}}"
             f"\n  dev: {{path: {data}, text_column: sentence, label_column: label}}", *verb_lines]
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("verb, lines, expected", [
    ("prune", ["prune: {method: blocks, remove: 5, calibration_rows: 2}"], "prune.remove=5.0 removes 5 of 2 blocks"),
    ("distill", ["student: {keep_blocks: 'first:9'}"], "student.keep_blocks 'first:9' must be"),
    ("quantize", ["method: int8_weight_only", "group_size: 24"], "group_size=24 does not divide"),
])
def test_a_problem_found_on_the_loaded_model_leaves_no_run_folder(tiny_llama_dir, sentiment_tsv, tmp_path, verb, lines,
                                                                   expected):
    proc = run_cli(verb, str(compress_recipe(tmp_path, tiny_llama_dir, sentiment_tsv, lines)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_failed_command_discards_only_the_run_folders_it_left_empty(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tuneforge import runs

    monkeypatch.setattr(runs, "_started", [])  # only this test's folders (others ran in this process before)
    cfg = SimpleNamespace(output_dir=str(tmp_path), name="r", model_dump=lambda mode: {"name": "r"})
    earlier = tmp_path / "kept-from-before"
    earlier.mkdir()
    (earlier / "config.yaml").write_text("name: kept\n")
    empty = runs.new_run_dir(cfg)
    with_work = runs.new_run_dir(cfg)
    (with_work / "metrics.jsonl").write_text('{"step": 1}\n')  # a logged step is work: never thrown away
    reused = runs.new_run_dir(SimpleNamespace(**{**vars(cfg), "name": "kept-from-before"}), reuse=True)

    assert runs.discard_unstarted_runs() == [empty]
    assert not empty.exists() and with_work.exists() and reused.exists() and (earlier / "config.yaml").exists()


def test_an_adapter_trained_on_another_base_model_is_named_as_such(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from tuneforge.errors import UserError
    from tuneforge.models.loading import attach_adapter

    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    with pytest.raises(UserError) as err:
        attach_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(tmp_path / "adapter"))
    assert f"adapter '{tmp_path / 'adapter'}' was trained on another base model" in str(err.value)
    assert "q_proj.lora_A" in str(err.value) and "in the adapter" in str(err.value)


def test_group_size_must_divide_every_linear_input(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tuneforge.compress.quant.torchao import check_group_size
    from tuneforge.errors import UserError

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)  # Linear inputs 32 and 64 wide
    check_group_size(model, 32)
    check_group_size(model, None)
    with pytest.raises(UserError, match=r"group_size=24 does not divide this model's Linear input widths \[32, 64\]; "
                                        r"use one that divides all of \[32, 64\], e.g. 32"):
        check_group_size(model, 24)


def test_output_dir_that_is_a_file_is_a_config_error(tmp_path):
    from tuneforge.config import FinetuneConfig, validate
    from tuneforge.errors import UserError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder; set output_dir to a folder"):
        validate(FinetuneConfig, {"output_dir": str(tmp_path / "afile" / "runs"), "data": {"train": {"path": "x.tsv"}}})


def test_a_missing_folder_under_a_local_folder_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    from tuneforge.errors import UserError
    from tuneforge.models import resolve_model

    (tmp_path / "runs" / "earlier").mkdir(parents=True)
    (tmp_path / "runs" / "earlier" / "config.yaml").write_text("name: earlier\n")  # a folder of run folders
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match=r"model 'runs/nope' not found; tried: .*local folder runs/nope \(not found\)"):
        resolve_model("runs/nope")
