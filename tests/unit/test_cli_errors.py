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


def test_torchao_start_up_notices_are_dropped():
    """peft imports torchao and bitsandbytes, which log notices no user can act on; the CLI drops exactly those."""
    def stderr_of(code):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env=ENV).stderr

    plain = stderr_of("import peft")
    if "is an Enum subclass" not in plain and "Failed to load" not in plain:
        pytest.skip("the installed torchao prints neither notice")
    quiet = stderr_of("from tuneforge.cli import drop_known_import_notices as d; d(); import peft; "
                      "import logging; logging.getLogger('torchao').warning('kept: other torchao warnings')")
    assert "is an Enum subclass" not in quiet and "Failed to load" not in quiet
    assert "kept: other torchao warnings" in quiet
