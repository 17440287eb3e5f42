"""train.report_to: a finetune on the tiny random Llama reported to TensorBoard (read back by a real
`tensorboard` server over HTTP) and MLflow (read back by MLflow's own client), and the failure paths."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tuneforge.config import FinetuneConfig, validate
from tuneforge.errors import UserError

pytest.importorskip("tensorboard", reason="the track extra (pip install 'tuneforge[track]')")
pytest.importorskip("mlflow", reason="the track extra (pip install 'tuneforge[track]')")


def make_cfg(model_dir, data, out, **train):
    cols = {"text_column": "sentence", "label_column": "label"}
    return validate(FinetuneConfig, {
        "name": "tracked", "output_dir": str(out), "model": str(model_dir), "dtype": "float32",
        "task": {"name": "sentiment"},
        "data": {"train": {"path": str(data), **cols}, "dev": {"path": str(data), **cols}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"batch_size": 2, "lr": 1e-2, "epochs": 2, "log_every": 1, "eval_every": 4, "bf16": "false", **train},
        "eval": {"batch_size": 8, "max_new_tokens": 2},
    })


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tuneforge-test")
    return uri


@pytest.fixture()
def tracked_run(tiny_llama_dir, sentiment_tsv, tmp_path, mlflow_uri):
    from tuneforge.recipes.finetune import finetune

    return finetune(make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "runs", report_to=["tensorboard", "mlflow"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def test_tensorboard_server_lists_the_runs_scalars_and_images(tracked_run, tmp_path):
    port = free_port()
    exe = shutil.which("tensorboard", path=str(Path(sys.executable).parent)) or shutil.which("tensorboard")
    proc = subprocess.Popen([exe, "--logdir", str(tracked_run.parent), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline, tags = time.time() + 60, {}
        while time.time() < deadline:  # the server loads event files in the background
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
                if any("train/loss" in t for t in tags.values()):
                    break
            except OSError:
                pass
            time.sleep(1)
        run = next(r for r, t in tags.items() if "train/loss" in t)
        assert run.startswith("tracked/tb")
        want = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_second", "dev/accuracy",
                "final/after.accuracy", "final/before.accuracy"}
        assert want <= set(tags[run]), want - set(tags[run])
        points = get_json(f"{base}/data/plugin/scalars/scalars?run={run}&tag=train/loss")
        logged = [json.loads(line) for line in (tracked_run / "metrics.jsonl").read_text().splitlines()]
        losses = [row["loss"] for row in logged if "loss" in row]
        assert [p[1] for p in points] == [row["step"] for row in logged if "loss" in row]
        assert [p[2] for p in points] == pytest.approx(losses, rel=1e-6)  # float32 event values
        images = get_json(f"{base}/data/plugin/images/tags")
        assert any("report/loss_curve" in t for t in images.get(run, {})), images
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_mlflow_client_reads_back_the_final_metric_params_and_report(tracked_run, mlflow_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = (tracked_run / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.metrics["final/after.accuracy"] == pytest.approx(metrics["after"]["accuracy"])
    assert run.data.metrics["final/train.tokens_per_second"] == pytest.approx(metrics["train"]["tokens_per_second"])
    assert run.data.params["train.lr"] == "0.01" and run.data.params["method"] == "lora"
    assert len(client.get_metric_history(run_id, "train/loss")) == 8  # one per optimizer step (log_every 1)
    artifacts = [a.path for a in client.list_artifacts(run_id, "report")]
    assert "report/loss_curve.png" in artifacts


def test_a_failed_run_is_marked_failed_in_mlflow(tiny_llama_dir, sentiment_tsv, tmp_path, mlflow_uri, monkeypatch):
    from mlflow import MlflowClient

    from tuneforge import cli
    from tuneforge.training import loop

    def broken(*args, **kwargs):
        raise UserError("dev scoring broke")

    data = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "runs", report_to=["mlflow"], eval_every=0).model_dump(mode="json")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({**data, "eval_before": False}))
    monkeypatch.setattr(loop, "score_task", broken)  # fails after training, at the final dev scoring
    assert cli.main(["finetune", str(cfg)]) != 0
    run_id = (tmp_path / "runs" / "tracked" / "mlflow_run_id").read_text().strip()
    assert MlflowClient(tracking_uri=mlflow_uri).get_run(run_id).info.status == "FAILED"


def test_a_missing_tracker_package_is_a_config_error_naming_the_key(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"train\.report_to.*wandb needs the wandb package"):
        validate(FinetuneConfig, {"model": "x", "data": {"train": {"path": "x"}}, "train": {"report_to": ["wandb"]}})


def test_report_to_accepts_one_name_and_none():
    cfg = validate(FinetuneConfig, {"model": "x", "data": {"train": {"path": "x"}}, "train": {"report_to": "tensorboard"}})
    assert cfg.train.report_to == ["tensorboard"]
    cfg = validate(FinetuneConfig, {"model": "x", "data": {"train": {"path": "x"}}, "train": {"report_to": "none"}})
    assert cfg.train.report_to == []
    with pytest.raises(UserError, match="report_to"):
        validate(FinetuneConfig, {"model": "x", "data": {"train": {"path": "x"}}, "train": {"report_to": ["neptune"]}})


def test_without_report_to_nothing_is_written_beside_the_run(tiny_llama_dir, sentiment_tsv, tmp_path, monkeypatch):
    from tuneforge.recipes.finetune import finetune

    monkeypatch.chdir(tmp_path)
    run_dir = finetune(make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "runs", epochs=0.5))
    assert not (run_dir / "tb").exists() and not (run_dir / "mlflow_run_id").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert os.listdir(tmp_path / "runs") == ["tracked"]


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tiny_llama_dir, sentiment_tsv, tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    from tuneforge.recipes.finetune import finetune

    first = finetune(make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "runs", report_to=["mlflow"], save_every=4,
                              eval_every=0))
    run_id = (first / "mlflow_run_id").read_text().strip()
    cfg = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "runs", report_to=["mlflow"], eval_every=0,
                   resume=str(first / "checkpoints" / "step-4"))
    cfg.eval_before = False
    assert finetune(cfg) == first
    assert (first / "mlflow_run_id").read_text().strip() == run_id
    client = MlflowClient(tracking_uri=mlflow_uri)
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8]  # 8 steps, then the resumed run's 5..8 again
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1


@pytest.mark.parametrize("verb", ["distill", "prune"])
def test_distill_and_prune_report_their_training_too(verb, tiny_llama_dir, sentiment_tsv, tmp_path, mlflow_uri):
    """The verbs that train through training.loop.train get the same trackers as finetune."""
    from mlflow import MlflowClient

    from tuneforge.recipes.distill import DistillConfig, distill
    from tuneforge.recipes.prune import PruneConfig, prune

    cols = {"text_column": "sentence", "label_column": "label"}
    common = {"name": verb, "output_dir": str(tmp_path / "runs"), "task": {"name": "sentiment"}, "model": str(tiny_llama_dir),
              "eval_before": False,
              "data": {"train": {"path": str(sentiment_tsv), **cols}, "dev": {"path": str(sentiment_tsv), **cols}},
              "train": {"batch_size": 2, "max_steps": 3, "log_every": 1, "bf16": "false", "report_to": ["tensorboard", "mlflow"]},
              "eval": {"batch_size": 8, "max_new_tokens": 2}}
    if verb == "distill":
        run_dir = distill(validate(DistillConfig, {**common, "student": {"keep_blocks": [0]}, "eval_teacher": False}))
    else:
        run_dir = prune(validate(PruneConfig, {**common, "prune": {"method": "magnitude", "sparsity": 0.5},
                                               "recovery": {"enabled": True, "r": 2, "alpha": 4, "distill": False}}))
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert len(client.get_metric_history(run_id, "train/loss")) == 3
    assert client.get_run(run_id).info.status == "FINISHED"
    assert any(name.startswith("final/") for name in client.get_run(run_id).data.metrics)
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_wandb_offline_keeps_the_run_on_disk_and_no_login_is_one_clear_error(tiny_llama_dir, sentiment_tsv, tmp_path,
                                                                              monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra (pip install 'tuneforge[wandb]')")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = __import__("tuneforge.recipes.finetune", fromlist=["finetune"]).finetune(
        make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "runs", report_to=["wandb"], epochs=0.5))
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))

    # not logged in, online: its own process (wandb keeps its settings for the life of a process)
    data = make_cfg(tiny_llama_dir, sentiment_tsv, tmp_path / "runs", report_to=["wandb"], epochs=0.5).model_dump(mode="json")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({**data, "name": "unlogged", "eval_before": False}))
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", "finetune", str(cfg)], env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: train.report_to: wandb could not start" in proc.stderr and "WANDB_MODE=offline" in proc.stderr
    assert "Traceback" not in proc.stderr
