"""`tuneforge continual` recipes: stages trained one after another, probes scored beside them, and the method
that keeps old skills (continual.strategy)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tuneforge.compress.sections import KDSection
from tuneforge.config import DataConfig, LoraConfig, ProbedEvalConfig, Section, TaskConfig, TrainConfig

STRATEGIES = ("sequential", "replay", "adapter_per_task", "adapter_chain", "l2", "ewc", "self_distill")
# strategies that keep one adapter per stage: scored routed (each task by its own adapter) and merged
PER_TASK = ("adapter_per_task", "adapter_chain")


class StageSection(Section):
    name: str = Field(description="the stage's (and its task's) name in the ledger, e.g. sst2")
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig, description="train (what the stage learns) and dev (what "
                             "the ledger scores after every stage)")

    @model_validator(mode="after")
    def _needs_both_splits(self):
        if self.data.train is None or self.data.dev is None:
            raise ValueError(f"stages: stage '{self.name}' needs data.train and data.dev")
        return self


class ReplaySection(Section):
    ratio: float = Field(0.2, ge=0, lt=1, description="share of each later stage's training rows drawn from earlier "
                         "stages' training rows (0.2: one replayed row for every four new ones)")
    seed: int = Field(0, description="which earlier rows are drawn")


class MergeSection(Section):
    method: Literal["linear", "ties", "dare_ties"] = Field("ties", description="peft's adapter merge")
    weights: list[float] | None = Field(None, description="one weight per stage; null: 1 each")
    density: float = Field(0.5, gt=0, le=1, description="ties / dare_ties: share of each adapter's entries kept")


class PenaltySection(Section):
    weight: float = Field(1.0, ge=0, description="L2-SP: weight of the summed squared distance of the trainable "
                          "weights from where the previous stage left them")


class EWCSection(Section):
    weight: float = Field(1.0, ge=0, description="EWC: weight of the Fisher-weighted squared distance from each "
                          "earlier stage's weights (each stage's Fisher scaled to a mean of 1)")
    rows: int = Field(64, ge=1, description="training rows of each stage its diagonal Fisher is estimated on")


class SelfDistillSection(KDSection):
    pass


class ContinualSection(Section):
    strategy: Literal[STRATEGIES] | list[Literal[STRATEGIES]] = Field(
        "sequential", description="sequential: one LoRA trained on through every stage; replay; adapter_per_task (a "
        "fresh LoRA per stage, + their merge); adapter_chain (a LoRA per stage that starts where the previous "
        "stage's ended, + their merge); l2 (L2-SP); ewc; self_distill (KD from the previous stage's model on replayed rows). A list "
        "runs each in turn and writes the table that compares them")
    replay: ReplaySection = Field(default_factory=ReplaySection)
    merge: MergeSection = Field(default_factory=MergeSection)
    l2: PenaltySection = Field(default_factory=PenaltySection)
    ewc: EWCSection = Field(default_factory=EWCSection)
    self_distill: SelfDistillSection = Field(default_factory=SelfDistillSection)


class ContinualConfig(Section):
    name: str = Field("continual", description="run folder name under output_dir")
    output_dir: str = Field("runs", description="where run folders go")
    model: str | None = Field(None, description="the base model; default: the embedded model")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="the base's weights dtype")
    stages: list[StageSection] = Field(description="trained in order, each from the previous stage's weights")
    continual: ContinualSection = Field(default_factory=ContinualSection)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig, description="each stage's training loop")
    eval: ProbedEvalConfig = Field(default_factory=ProbedEvalConfig, description="how every dev set is scored (eval.limit: rows; eval.probes: columns no stage trains)")

    @model_validator(mode="after")
    def _stages_are_named_once(self):
        names = [s.name for s in self.stages] + [p.name for p in self.eval.probes]
        if len(self.stages) < 2:
            raise ValueError("stages: a continual run needs at least two stages")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"stages/probes: the name(s) {twice} appear more than once; each column of the ledger "
                             "needs its own name")
        weights = self.continual.merge.weights
        if weights is not None and len(weights) != len(self.stages):
            raise ValueError(f"continual.merge.weights has {len(weights)} weights for {len(self.stages)} stages")
        return self
