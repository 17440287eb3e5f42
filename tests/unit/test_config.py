import importlib
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from tuneforge.cli import VERBS
from tuneforge.config import FinetuneConfig, RunConfig, load_config, parse_overrides, validate
from tuneforge.errors import UserError

REPO = Path(__file__).resolve().parents[2]
TRAIN = {"data": {"train": {"path": "x.tsv"}}}


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(UserError) as e:
        validate(FinetuneConfig, {**TRAIN, "train": {"lrr": 1e-4}})
    assert "train.lrr: unknown key (did you mean 'lr'?)" in str(e.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(UserError) as e:
        validate(FinetuneConfig, {**TRAIN, "train": {"lr": "fast", "epochs": -1}, "methd": "lora"})
    msg = str(e.value)
    assert "3 problem(s)" in msg and "train.lr" in msg and "train.epochs" in msg and "methd" in msg


def test_finetune_needs_train_data():
    with pytest.raises(UserError, match="data.train is required"):
        validate(FinetuneConfig, {})


def test_overrides_parse_yaml_scalars_and_nest():
    assert parse_overrides(["train.lr=1e-4", "data.train.limit=5", "name=x", "train.bf16=false"]) == {
        "train": {"lr": 1e-4, "bf16": False}, "data": {"train": {"limit": 5}}, "name": "x"}
    # YAML 1.1 would read 2:4 as the base-60 integer 124 and 010 as octal 8
    assert parse_overrides(["prune.pattern=2:4", "a=010", "b=-3", "c=.5", "d=1_000", "e=0x1F"]) == {
        "prune": {"pattern": "2:4"}, "a": "010", "b": -3, "c": 0.5, "d": 1000, "e": 31}
    with pytest.raises(UserError, match="not key=value"):
        parse_overrides(["train.lr"])


def test_override_beats_file_and_bad_yaml_names_the_line(tmp_path):
    good = tmp_path / "a.yaml"
    good.write_text("data:\n  train:\n    path: x.tsv\ntrain:\n  lr: 0.1\n")
    assert load_config(FinetuneConfig, good, ["train.lr=0.5"]).train.lr == 0.5
    bad = tmp_path / "b.yaml"
    bad.write_text("train:\n  lr: [1,\n")
    with pytest.raises(UserError, match=r"b\.yaml:\d+: not valid YAML"):
        load_config(FinetuneConfig, bad)


def test_a_problem_given_on_the_command_line_says_so(tmp_path):
    recipe = tmp_path / "a.yaml"
    recipe.write_text("data:\n  train:\n    path: x.tsv\ntrain:\n  lr: fast\n")
    with pytest.raises(UserError) as e:
        load_config(FinetuneConfig, recipe, ["train.epochz=2"])
    lines = str(e.value).splitlines()
    assert lines[0] == f"{recipe}: 2 problem(s):"
    assert any(line.startswith("  train.lr:") and "command line" not in line for line in lines)  # in the file
    assert any("train.epochz: unknown key (did you mean 'epochs'?) (from the command line)" in line for line in lines)


def test_unknown_key_in_a_list_of_sections_gets_a_suggestion():
    from tuneforge.recipes.compare import CompareConfig

    with pytest.raises(UserError, match=r"models\.1\.pth: unknown key \(did you mean 'path'\?\)"):
        validate(CompareConfig, {"data": {"dev": {"path": "d.tsv"}}, "models": [{"name": "a"}, {"name": "b", "pth": "x"}]})


def test_a_bad_pruning_pattern_is_a_config_error():
    from tuneforge.recipes.prune import PruneConfig

    with pytest.raises(UserError, match=r"prune.pattern '3:2' must be 'unstructured' or N:M"):
        validate(PruneConfig, {"data": {"dev": {"path": "d.tsv"}, "train": {"path": "t.tsv"}}, "prune": {"pattern": "3:2"}})


def _config_classes(module) -> list[type[BaseModel]]:
    """A verb's run configs: the models with a run folder (name + output_dir), RunConfig itself aside."""
    return [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, BaseModel)
            and {"name", "output_dir"} <= set(v.model_fields) and v is not RunConfig]


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates_against_its_verb(recipe):
    text = recipe.read_text(encoding="utf-8")
    found = re.search(rf"tuneforge ([a-z-]+) recipes/{re.escape(recipe.name)}", text)
    assert found, f"{recipe.name} must open with the command that runs it"
    verb = found.group(1)
    module = importlib.import_module(VERBS[verb][0])
    classes = _config_classes(module)
    if verb == "finetune":
        from tuneforge.training.classifier import ClassifierConfig

        classes.append(ClassifierConfig)
    assert classes, f"no config class found for verb {verb}"
    errors = []
    for cls in classes:
        try:
            load_config(cls, recipe)
            return
        except UserError as e:
            errors.append(str(e))
    pytest.fail(f"{recipe.name} does not validate: {errors}")


def test_yaml_files_read_numbers_as_yaml_1_2(tmp_path):
    from tuneforge.config import read_yaml

    path = tmp_path / "r.yaml"
    path.write_text("prune:\n  pattern: 2:4\ntrain:\n  lr: 5e-5\n  max_steps: 250\nname: run-010\n", encoding="utf-8")
    assert read_yaml(path) == {"prune": {"pattern": "2:4"}, "train": {"lr": 5e-5, "max_steps": 250}, "name": "run-010"}


def test_a_folder_or_a_non_utf8_file_as_the_recipe_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"is a folder; pass a recipe file in it"):
        load_config(FinetuneConfig, tmp_path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: x\nmodel: caf\xe9\n")
    with pytest.raises(UserError, match=r"latin1\.yaml:2: not valid UTF-8 \(byte 0xe9\); save the file as UTF-8"):
        load_config(FinetuneConfig, latin1)


def test_an_empty_mapping_override_replaces_the_files_mapping():
    from tuneforge.config import merge

    base = {"data": {"train": {"path": "d", "files": {"text": "a.txt"}}}}
    assert merge(base, parse_overrides(["data.train.files={}"]))["data"]["train"] == {"path": "d", "files": {}}
    assert merge(base, {"data": {"train": {"limit": 3}}})["data"]["train"]["files"] == {"text": "a.txt"}


@pytest.mark.parametrize("options, expected", [
    ({"labels": "positive"}, r"task.labels: Input should be a valid list \(got 'positive'\); write a list"),
    ({"max_new_tokens": "lots"}, r"task.max_new_tokens: Input should be a valid integer"),
    ({"eval_mode": "loss"}, r"task.eval_mode is not an option of task 'sentiment'; its options are: cot_max_new_tokens,"),
])
def test_task_options_are_checked_by_type_and_internal_fields_are_not_options(options, expected):
    from tuneforge.tasks import get_task

    with pytest.raises(UserError, match=expected):
        get_task("sentiment", **options)
    assert get_task("sentiment", labels=["bad", "good"], max_new_tokens="4").max_new_tokens == 4
    assert get_task("sentiment", labels=[1, 2, 3]).labels == ["1", "2", "3"]  # star ratings are names too


def test_evaluate_loads_a_finetune_recipe_and_keeps_only_what_it_uses():
    from tuneforge.config import EvaluateConfig

    recipe = REPO / "recipes" / "sst2_lora.yaml"
    cfg = load_config(EvaluateConfig, recipe, ["adapter=runs/sst2-lora/adapter", "train.lr=1e-4", "eval.limit=5"])
    assert (cfg.adapter, cfg.eval.limit, cfg.task.name) == ("runs/sst2-lora/adapter", 5, "sentiment")
    assert not {"method", "lora", "train", "eval_before"} & set(cfg.model_dump())  # training sections dropped
    with pytest.raises(UserError, match="evall: unknown key"):
        load_config(EvaluateConfig, recipe, ["evall.limit=5"])  # a key neither verb has is still an error


def test_evaluate_refuses_a_strategy_the_task_lacks_before_reading_data():
    from tuneforge.config import EvaluateConfig
    from tuneforge.recipes.evaluate import evaluate

    cfg = validate(EvaluateConfig, {"task": {"name": "translation"}, "data": {"dev": {"path": "no-such.tsv"}},
                                    "eval": {"strategy": "cot"}})
    with pytest.raises(UserError, match="eval.strategy: task 'translation' does not support cot; it supports zero_shot, few_shot"):
        evaluate(cfg)


def test_more_shots_than_training_rows_is_an_error():
    from tuneforge.tasks.prompts import check_enough_shots, draw_shots

    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    with pytest.raises(UserError, match=r"eval.shots=3 but data.train has only 2 rows"):
        draw_shots(rows, 3)
    check_enough_shots(rows, 2)
    assert len(draw_shots(rows, 2)) == 2


def test_resume_without_a_checkpoint_is_refused_before_any_work(tmp_path):
    from tuneforge.training.setup import checkpoint_to_resume

    cfg = validate(FinetuneConfig, {**TRAIN, "output_dir": str(tmp_path), "name": "r", "train": {"resume": "latest"}})
    with pytest.raises(UserError, match=r"train.resume: no checkpoint found at .*r/checkpoints; pass a checkpoints/step-N"):
        checkpoint_to_resume(cfg)
    assert not (tmp_path / "r").exists()  # refused without making the run folder
    step = tmp_path / "r" / "checkpoints" / "step-4"
    step.mkdir(parents=True)
    (step / "step.json").write_text('{"step": 4}')
    assert checkpoint_to_resume(cfg) == step


def test_a_model_given_as_a_file_says_what_it_takes(tmp_path):
    from tuneforge.models import resolve_model

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(UserError, match=r"is a GGUF file; this takes a Hugging Face model folder or a registry name"):
        resolve_model(str(tmp_path / "m.gguf"))


def test_a_misspelt_head_is_named():
    from tuneforge.training.classifier import is_classifier_config

    with pytest.raises(UserError, match=r"head: 'clasifier' is not a head tuneforge trains"):
        is_classifier_config({"head": "clasifier"})
    assert is_classifier_config({"head": "classifier"}) and not is_classifier_config({"method": "lora"})
