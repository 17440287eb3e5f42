"""train.report_to: a training run also sent to TensorBoard, MLflow or Weights & Biases, through accelerate's
trackers, beside tuneforge's own metrics.jsonl and report. One Tracking per run folder, opened when training
starts and ended by runs.complete_run (final metrics, the report's PNGs) or by a failed command.

    tensorboard  event files in runs/NAME/tb/ (`tensorboard --logdir runs`)
    mlflow       $MLFLOW_TRACKING_URI, else MLflow's own default (./mlflow.db, artifacts in ./mlruns); experiment
                 $MLFLOW_EXPERIMENT_NAME, else "tuneforge"; a resumed run goes on in the same MLflow run
    wandb        project $WANDB_PROJECT, else "tuneforge"; needs a login or WANDB_MODE=offline
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tuneforge.errors import UserError

_open: dict[Path, Tracking] = {}  # run folder -> its open trackers (a continual run keeps one over its stages)


class Tracking:
    def __init__(self, run_dir: Path, trackers: list):
        self.run_dir, self.trackers = run_dir, trackers

    def log(self, values: dict, step: int) -> None:
        scalars = {k: float(v) for k, v in values.items() if _is_number(v)}
        for t in self.trackers:
            t.log(scalars, step=step)

    def log_images(self, folder: Path, prefix: str = "report") -> None:
        """Every PNG the report drew (loss curve, metric bars, ...)."""
        import matplotlib.image

        for png in sorted(Path(folder).glob("*.png")):
            for t in self.trackers:
                if t.name == "mlflow":
                    t.log_artifact(str(png), artifact_path=prefix)
                else:  # tensorboard and wandb take pixels; RGBA floats in [0, 1] from matplotlib
                    pixels = matplotlib.image.imread(str(png))[..., :3]
                    kwargs = {"dataformats": "NHWC"} if t.name == "tensorboard" else {}
                    t.log_images({f"{prefix}/{png.stem}": pixels[None] if kwargs else [pixels]}, step=0, **kwargs)

    def end(self, status: str = "FINISHED") -> None:
        _open.pop(self.run_dir, None)
        for t in self.trackers:
            if t.name == "mlflow":
                import mlflow

                mlflow.end_run(status=status)
            else:
                t.finish()


def open_tracking(report_to: list[str], run_dir: Path, hparams: dict, *, main_process: bool = True,
                  resumed: bool = False, name: str | None = None) -> Tracking | None:
    """The run's trackers, started with the resolved config as hyper-parameters; None when report_to is empty.
    Other processes of a distributed run get an empty Tracking (only the main process reports)."""
    if not report_to:
        return None
    run_dir = Path(run_dir)
    if run_dir in _open:
        return _open[run_dir]
    trackers = [_start(kind, run_dir, resumed, name or run_dir.name) for kind in report_to] if main_process else []
    flat = {k: v if isinstance(v, int | float | str | bool) else json.dumps(v, ensure_ascii=False)
            for k, v in flatten(hparams).items()}
    for t in trackers:
        if not getattr(t, "run_id", None):  # a continued MLflow run has them (and refuses a changed one)
            t.store_init_configuration(flat)
    _open[run_dir] = tracking = Tracking(run_dir, trackers)
    return tracking


def finish_run(run_dir: Path, metrics: dict) -> None:
    """A run is complete: its final metrics (every number in metrics.json, as final/...) and report images."""
    tracking = _open.get(Path(run_dir))
    if tracking is None:
        return
    tracking.log({f"final/{k}": v for k, v in flatten(metrics).items()}, step=0)
    tracking.log_images(run_dir)
    tracking.end()


def end_open_runs(status: str) -> None:
    """A command failed (FAILED) or was interrupted (KILLED): its trackers say so instead of 'finished'."""
    for tracking in list(_open.values()):
        tracking.end(status)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1e-4}} -> {'train.lr': 1e-4}; lists are kept as values."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        elif v is not None:
            out[f"{prefix}{k}"] = v
    return out


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v  # NaN is no point on a curve


def _start(name: str, run_dir: Path, resumed: bool, run_name: str):
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    ids = run_dir / f"{name}_run_id"  # a resumed run continues the MLflow / wandb run it started
    earlier = ids.read_text().strip() if resumed and ids.exists() else None
    if name == "tensorboard":
        tracker = TensorBoardTracker("tb", run_dir)  # event files in run_dir/tb
    elif name == "mlflow":
        tracker = MLflowTracker(os.environ.get("MLFLOW_EXPERIMENT_NAME", "tuneforge"), run_name=run_name, run_id=earlier)
    else:
        tracker = WandBTracker(os.environ.get("WANDB_PROJECT", "tuneforge"), name=run_name, dir=str(run_dir),
                               **({"id": earlier, "resume": "allow"} if earlier else {}))
    try:
        tracker.start()
    except Exception as e:
        if type(e).__module__.startswith("wandb.errors"):  # e.g. no API key: wandb's own words, and the way out
            raise UserError(f"train.report_to: wandb could not start: {e} Or set WANDB_MODE=offline to keep the "
                            "run on disk (upload it later with `wandb sync`).") from None
        raise
    if name == "mlflow":
        ids.write_text(tracker.tracker.info.run_id + "\n")
    elif name == "wandb":
        ids.write_text(tracker.run.id + "\n")
    return tracker

