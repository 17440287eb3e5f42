"""The shipped continual recipe runs on the embedded model and a few real rows: SST-2, then Vietnamese UIT-VSFC,
one adapter per task and their TIES merge, with the chat stage's held-back rows as a probe."""

import json
from pathlib import Path

import pytest

from tuneforge.config import read_yaml, validate
from tuneforge.continual.config import ContinualConfig

pytestmark = pytest.mark.integration
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "continual_chat_sst2_uitvsfc.yaml"


def test_the_shipped_recipe_fills_both_ledgers_on_real_rows(tmp_path, data_dir):
    from tuneforge.recipes.continual import continual

    data = read_yaml(RECIPE)
    chat, sst2, vsfc = data["stages"]
    for stage in (sst2, vsfc):
        stage["data"]["train"] |= {"limit": 16, "path": str(data_dir / Path(stage["data"]["train"]["path"]).relative_to("../shared/data"))}
        stage["data"]["dev"]["path"] = str(data_dir / Path(stage["data"]["dev"]["path"]).relative_to("../shared/data"))
    probe = {"name": "chat", "task": chat["task"], "limit": 4,
             "data": {**chat["data"]["dev"], "path": str(data_dir / "chat")}}
    data |= {"output_dir": str(tmp_path / "runs"), "stages": [sst2, vsfc],
             "eval": {**data["eval"], "limit": 8, "probes": [probe]},
             "continual": {**data["continual"], "strategy": "adapter_per_task"}}
    out = continual(validate(ContinualConfig, data, source=RECIPE.name))

    ledgers = json.loads((out / "ledger.json").read_text())["ledgers"]
    assert set(ledgers) == {"routed", "merged"}
    for book in ledgers.values():
        assert book["tasks"] == ["sst2", "uitvsfc", "chat"] and len(book["rows"]) == 3
        assert all(0 <= r[0] <= 1 and 0 <= r[1] <= 1 and r[2] > 1 for r in book["rows"])  # accuracies, a perplexity
    assert ledgers["routed"]["rows"][2][2] == ledgers["routed"]["rows"][0][2]  # the probe answered by the base
    for folder in ("1-sst2", "2-uitvsfc"):
        assert (out / "stages" / folder / "adapter" / "adapter_model.safetensors").exists()
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "uitvsfc" in report and "BWT" in report and "data:image/png;base64" in report
