"""eval.probes on a tiny random Llama: scored before and after training, in metrics.json, the report and the
terminal summary; bad probes refused before a run folder exists; a resumed run keeps the probes' before."""

from __future__ import annotations

import json

import pytest

from tuneforge.config import FinetuneConfig, validate
from tuneforge.errors import UserError
from tuneforge.recipes import finetune as finetune_module
from tuneforge.recipes.finetune import finetune
from tuneforge.report.run_report import COST_TITLE, cost_rows, print_summary

COLS = {"text_column": "sentence", "label_column": "label"}


@pytest.fixture(scope="module")
def chat_json(tmp_path_factory):
    """Alpaca-layout rows written here (not copied from any data set)."""
    rows = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
            {"instruction": "Dịch sang tiếng Anh.", "input": "xin chào", "output": "Hello."},
            {"instruction": "Say goodbye.", "input": "", "output": "Goodbye, see you soon."}]
    path = tmp_path_factory.mktemp("chat") / "chat.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def probed_cfg(model_dir, data, chat, out, probes=None, **train):
    return validate(FinetuneConfig, {
        "name": "p", "output_dir": str(out), "model": str(model_dir), "dtype": "float32",
        "task": {"name": "sentiment"},
        "data": {"train": {"path": str(data), **COLS}, "dev": {"path": str(data), **COLS}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"batch_size": 2, "lr": 1e-2, "epochs": 2, "log_every": 1, "bf16": "false", **train},
        "eval": {"batch_size": 8, "max_new_tokens": 2, "probes": probes if probes is not None else [
            # the trained task's own dev file: its before must equal the dev before (the same scorer)
            {"name": "same-dev", "task": {"name": "sentiment"}, "data": {"path": str(data), **COLS}},
            {"name": "chat", "task": {"name": "chat"}, "data": {"path": str(chat)}, "limit": 3},
        ]},
    })


def test_probes_are_scored_before_and_after_into_metrics_report_and_summary(tiny_llama_dir, sentiment_tsv, chat_json,
                                                                             tmp_path, capsys):
    run_dir = finetune(probed_cfg(tiny_llama_dir, sentiment_tsv, chat_json, tmp_path))
    result = json.loads((run_dir / "metrics.json").read_text())
    probes = result["probes"]
    assert list(probes) == ["same-dev", "chat"]
    same, chat = probes["same-dev"], probes["chat"]
    assert same["metric"] == "accuracy" and not same["lower_is_better"] and same["rows"] == 8
    assert same["before"] == result["before"]["accuracy"] and same["after"] == result["after"]["accuracy"]
    assert chat["metric"] == "perplexity" and chat["lower_is_better"] and chat["rows"] == 3
    assert chat["after"] != chat["before"]  # the LoRA update moved the chat loss too
    for p in probes.values():
        assert p["change"] == pytest.approx(p["after"] - p["before"]) and p["seconds"] > 0
    detail = result["detail"]["probes"]
    assert detail["before"]["chat"]["n"] == 3 and "loss" in detail["after"]["chat"]
    assert json.loads((run_dir / "probes_before.json").read_text()) == detail["before"]

    report = (run_dir / "report.md").read_text()
    section = report.split(f"## {COST_TITLE}")[1]
    names = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert names == ["evaluation", "sentiment (trained)", "same-dev", "chat"]
    assert COST_TITLE in (run_dir / "report.html").read_text()

    capsys.readouterr()
    print_summary(result, run_dir)
    printed = capsys.readouterr().out
    assert printed.index("after (lora)") < printed.index(COST_TITLE) < printed.index("| chat ")


def test_cost_rows_say_which_way_is_better():
    result = {"task": "sentiment", "primary_metric": "accuracy", "dev_rows": 10, "before": {"accuracy": 0.5},
              "after": {"accuracy": 0.75},
              "probes": {"chat": {"task": "chat", "metric": "perplexity", "lower_is_better": True, "rows": 4,
                                  "before": 10.0, "after": 12.0, "change": 2.0, "seconds": 1.0},
                         "late": {"task": "sentiment", "metric": "accuracy", "lower_is_better": False, "rows": 4,
                                  "before": None, "after": 0.5, "change": None, "seconds": 1.0}}}
    rows = {r["evaluation"]: r for r in cost_rows(result)}
    assert rows["sentiment (trained)"]["change"] == 0.25 and rows["sentiment (trained)"]["effect"] == "better"
    assert rows["chat"]["effect"] == "worse" and rows["chat"]["better when"] == "lower"
    assert rows["late"]["effect"] == "not scored before"
    assert cost_rows({**result, "probes": {}}) == []  # no probes, no table


def test_score_probes_leaves_a_training_model_in_training_mode(tiny_llama_dir, chat_json):
    from tuneforge.config import ProbeSection
    from tuneforge.models import load_model
    from tuneforge.scoring import score_probes
    from tuneforge.tasks.splits import build_probe

    model, tok = load_model(str(tiny_llama_dir), dtype="float32", device="cpu")
    probe = build_probe(ProbeSection(name="chat", task={"name": "chat"}, data={"path": str(chat_json)}, limit=2), 0)
    model.train()
    scored = score_probes(model, tok, [probe], batch_size=4)
    assert model.training and scored["chat"]["rows"] == 2 and scored["chat"]["perplexity"] > 1


@pytest.mark.parametrize(("probe", "message"), [
    ({"name": "gone", "task": {"name": "sentiment"}, "data": {"path": "no/such/dev.tsv"}},
     r"eval.probes\[1\] \(gone\): data path not found: 'no/such/dev.tsv'"),
    ({"name": "odd", "task": {"name": "poetry"}, "data": {"path": "x.tsv"}},
     r"eval.probes\[1\] \(odd\): task.name 'poetry' is unknown"),
])
def test_a_bad_probe_fails_before_any_run_folder_is_made(tiny_llama_dir, sentiment_tsv, chat_json, tmp_path,
                                                          probe, message):
    good = {"name": "chat", "task": {"name": "chat"}, "data": {"path": str(chat_json)}}
    out = tmp_path / "runs"
    with pytest.raises(UserError, match=message):
        finetune(probed_cfg(tiny_llama_dir, sentiment_tsv, chat_json, out, probes=[good, probe]))
    assert not out.exists()


def test_probe_names_must_differ():
    probe = {"name": "chat", "task": {"name": "chat"}, "data": {"path": "c.json"}}
    with pytest.raises(UserError, match=r"eval.probes: the name\(s\) \['chat'\] appear more than once"):
        validate(FinetuneConfig, {"data": {"train": {"path": "t.tsv"}}, "eval": {"probes": [probe, probe]}})


def test_a_resumed_run_keeps_the_probes_before_and_scores_only_after(tiny_llama_dir, sentiment_tsv, chat_json,
                                                                      tmp_path, monkeypatch):
    first = finetune(probed_cfg(tiny_llama_dir, sentiment_tsv, chat_json, tmp_path, save_every=4))
    before = json.loads((first / "metrics.json").read_text())["probes"]
    calls = []
    real = finetune_module.score_probes

    def counted(*args, **kwargs):
        calls.append(kwargs["when"])
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "score_probes", counted)
    resumed = finetune(probed_cfg(tiny_llama_dir, sentiment_tsv, chat_json, tmp_path,
                                  resume=str(first / "checkpoints" / "step-4")))
    assert resumed == first and calls == ["after"]
    again = json.loads((first / "metrics.json").read_text())["probes"]
    for name in before:
        assert again[name]["before"] == before[name]["before"]  # read back from probes_before.json
        assert again[name]["change"] == pytest.approx(again[name]["after"] - before[name]["before"])


def test_probe_changes_drop_a_before_scored_on_other_rows():
    from types import SimpleNamespace

    from tuneforge.scoring import probe_changes
    from tuneforge.tasks.splits import Probe

    chat = Probe("chat", SimpleNamespace(name="chat", primary_metric="perplexity"), [{}] * 4)
    after = {"chat": {"perplexity": 9.0, "rows": 4, "seconds": 2.0}}
    same = probe_changes([chat], {"chat": {"perplexity": 10.0, "rows": 4, "seconds": 1.0}}, after)["chat"]
    assert same == {"task": "chat", "metric": "perplexity", "lower_is_better": True, "rows": 4, "before": 10.0,
                    "after": 9.0, "change": -1.0, "seconds": 3.0}
    other = probe_changes([chat], {"chat": {"perplexity": 10.0, "rows": 8, "seconds": 1.0}}, after)["chat"]
    assert other["before"] is None and other["change"] is None and other["seconds"] == 2.0


def test_a_probe_an_encoder_decoder_cannot_score_is_refused_by_name(chat_json):
    from tuneforge.config import ProbeSection
    from tuneforge.training.setup import load_probes

    sections = [ProbeSection(name="talk", task={"name": "chat"}, data={"path": str(chat_json)})]
    assert load_probes(sections)[0].name == "talk"
    with pytest.raises(UserError, match=r"eval.probes\[0\] \(talk\): task.name: 'chat' is scored by perplexity"):
        load_probes(sections, seq2seq=True)
