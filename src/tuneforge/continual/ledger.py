"""The forgetting ledger: R[i][j] = the score on task j after stage i (row 0: the base model), and the summary
numbers of the continual-learning literature (GEM, Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018; TRACE 2023).

With T stages, stage j trains task j (j = 1..T, columns in stage order):
- average final score  ACC = mean_j R[T][j], over the tasks whose metric rises as it improves (a perplexity does
                       not average with accuracies)
- backward transfer    BWT = mean_{j<T} (R[T][j] - R[j][j])       (negative: later stages cost earlier tasks)
- forgetting of task j F_j = max_{i<T} R[i][j] - R[T][j]           (the best it ever was, minus where it ended)
- forward transfer     FWT = mean_{j>=2} (R[j-1][j] - R[0][j])    (what earlier stages gave a task before its own)

Every difference is taken so that positive means better: a task whose metric falls as it improves (perplexity)
has its differences negated. Extra columns (probes: tasks no stage trains) are scored in every row but enter no
summary number except their own change from row 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Ledger:
    tasks: list[str]                       # column names: the stages' tasks in order, then any probes
    stages: int                            # T: how many of the columns are trained stages
    lower_is_better: dict[str, bool] = field(default_factory=dict)
    rows: list[list[float]] = field(default_factory=list)  # rows[i][j]: after stage i (0 = before any)

    def add_row(self, scores: dict[str, float]) -> None:
        missing = [t for t in self.tasks if t not in scores]
        if missing:
            raise ValueError(f"ledger row lacks {missing}")
        self.rows.append([float(scores[t]) for t in self.tasks])

    def sign(self, j: int) -> float:
        return -1.0 if self.lower_is_better.get(self.tasks[j], False) else 1.0

    def gain(self, j: int, before: float, after: float) -> float:
        """after - before, signed so that positive is better on column j."""
        return self.sign(j) * (after - before)

    @property
    def complete(self) -> bool:
        return len(self.rows) == self.stages + 1

    def summary(self) -> dict:
        """ACC, BWT, FWT, per-task forgetting and probe changes, over the rows so far (the last row is 'final')."""
        if not self.rows:
            return {}
        last = len(self.rows) - 1  # stages done
        final = self.rows[last]
        trained = list(range(min(last, self.stages)))  # column j (0-based) was trained at row j + 1
        out: dict = {"stages_done": last}
        # a mean of accuracies and perplexities reads as neither: average the higher-is-better tasks (all, if none is)
        same_scale = [j for j in trained if self.sign(j) > 0] or trained
        if same_scale:
            out["average_final"] = sum(final[j] for j in same_scale) / len(same_scale)
        earlier = [j for j in trained if j + 1 < last]
        out["bwt"] = (sum(self.gain(j, self.rows[j + 1][j], final[j]) for j in earlier) / len(earlier)) if earlier else None
        out["forgetting"] = {self.tasks[j]: self.forgetting(j, last) for j in trained}
        later = [j for j in range(1, self.stages) if j <= last]  # row j exists: the stage just before task j's own
        out["fwt"] = (sum(self.gain(j, self.rows[0][j], self.rows[j][j]) for j in later) / len(later)) if later else None
        out["probes"] = {self.tasks[j]: {"before": self.rows[0][j], "final": final[j],
                                         "change": self.gain(j, self.rows[0][j], final[j])}
                         for j in range(self.stages, len(self.tasks))}
        return out

    def forgetting(self, j: int, last: int | None = None) -> float:
        """max over rows before `last` of R[i][j], minus R[last][j], signed so that positive is lost ground."""
        last = len(self.rows) - 1 if last is None else last
        if last == 0:
            return 0.0
        best = max(self.rows[:last], key=lambda row: self.sign(j) * row[j])[j]
        return self.gain(j, self.rows[last][j], best)

    def to_json(self) -> dict:
        return {"tasks": self.tasks, "stages": self.stages, "lower_is_better": self.lower_is_better, "rows": self.rows,
                "summary": self.summary()}

    @classmethod
    def from_json(cls, data: dict) -> Ledger:
        return cls(list(data["tasks"]), int(data["stages"]), dict(data.get("lower_is_better", {})),
                   [list(map(float, r)) for r in data["rows"]])
