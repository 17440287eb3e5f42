"""Deploy bundles: what each target writes, the model layout, bad input, secrets, and the vendor field checks."""

from __future__ import annotations

import argparse
import copy
import stat

import pytest
import yaml

from tuneforge import cli_args
from tuneforge.deploy import TARGETS, deploy
from tuneforge.deploy.checks import (
    check_azureml_deployment,
    check_bundle,
    check_cloud_run,
    check_containerapp,
    check_kserve,
)
from tuneforge.errors import UserError
from tuneforge.recipes import deploy as deploy_cli

ADAPTER = "hỗ-trợ"  # Vietnamese names must survive every file format

EXPECTED = {
    "docker": ["compose.yaml"],
    "k8s": ["k8s/deployment.yaml", "k8s/service.yaml", "k8s/hpa.yaml", "kserve/inferenceservice.yaml"],
    "aws": ["cloudformation.yaml"],
    "gcp": ["cloudrun.yaml", "vertex-deploy.sh"],
    "azure": ["azureml/endpoint.yml", "azureml/deployment.yml", "containerapp.yaml"],
}


@pytest.fixture()
def model_dir(tmp_path):
    folder = tmp_path / "model-src"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    (folder / "model.safetensors").chmod(0o600)  # as the embedded import writes it: the image user must still read it
    return folder


@pytest.fixture()
def adapter_dir(tmp_path):
    folder = tmp_path / "run" / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 128)
    return folder


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("target", TARGETS)
def test_every_target_writes_its_files_and_passes_the_field_checks(tmp_path, model_dir, adapter_dir, target, gpu):
    out = deploy(target, tmp_path / "bundle", str(model_dir), {ADAPTER: str(adapter_dir)}, gpu=gpu)
    for rel in ["Dockerfile", "Dockerfile.cuda", ".dockerignore", "entrypoint.sh", "README.md", *EXPECTED[target]]:
        assert (out / rel).is_file(), rel
    assert check_bundle(out) == []
    entry = (out / "entrypoint.sh").read_text(encoding="utf-8")
    assert f'--adapter "{ADAPTER}=$MODEL_DIR/adapters/{ADAPTER}"' in entry
    assert (out / "entrypoint.sh").stat().st_mode & stat.S_IXUSR
    # One model layout everywhere: base files at the top, adapters under adapters/NAME/, world-readable.
    assert (out / "model" / "config.json").is_file()
    weights = out / "model" / "model.safetensors"
    assert weights.stat().st_mode & 0o044 == 0o044
    assert (out / "model" / "adapters" / ADAPTER / "adapter_config.json").is_file()
    assert (out / "tuneforge-src" / "src" / "tuneforge" / "deploy" / "bundle.py").is_file()
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "docker build" in readme and ("docker push" in readme or "docker tag" in readme)
    assert "chat/completions" in readme or "invoke-endpoint" in readme
    assert not list(tmp_path.glob(".bundle.*"))  # the temporary folder was renamed, not left behind


def test_gpu_bundles_ask_for_a_gpu_everywhere(tmp_path, model_dir):
    k8s = deploy("k8s", tmp_path / "k8s", str(model_dir), gpu=True)
    pod = yaml.safe_load((k8s / "k8s" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    gcp = deploy("gcp", tmp_path / "gcp", str(model_dir), gpu=True)
    run = yaml.safe_load((gcp / "cloudrun.yaml").read_text())["spec"]["template"]["spec"]
    assert run["nodeSelector"]["run.googleapis.com/accelerator"] == "nvidia-l4"
    docker = deploy("docker", tmp_path / "docker", str(model_dir), gpu=True)
    compose = yaml.safe_load((docker / "compose.yaml").read_text())["services"]["chat"]
    assert compose["build"]["dockerfile"] == "Dockerfile.cuda"
    assert compose["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "TUNEFORGE_ENGINE=vllm" in (docker / "Dockerfile.cuda").read_text()
    aws = deploy("aws", tmp_path / "aws", str(model_dir), gpu=True)
    assert "AllowedValues: [tuneforge, lmi]" in (aws / "cloudformation.yaml").read_text()


def test_mount_keeps_the_model_out_of_the_image(tmp_path, model_dir):
    baked = deploy("k8s", tmp_path / "baked", str(model_dir))
    assert "COPY model/ /models/" in (baked / "Dockerfile").read_text()
    assert "!model/" in (baked / ".dockerignore").read_text()
    assert not (baked / "k8s" / "pvc.yaml").exists()

    mounted = deploy("k8s", tmp_path / "mounted", str(model_dir), bake=False)
    assert "COPY model/" not in (mounted / "Dockerfile").read_text()
    assert "!model/" not in (mounted / ".dockerignore").read_text()
    pod = yaml.safe_load((mounted / "k8s" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "tuneforge-chat-models"
    assert pod["initContainers"][0]["name"] == "check-model"
    assert (mounted / "model" / "config.json").is_file()  # still in the bundle, to upload to the volume

    aws = deploy("aws", tmp_path / "aws", str(model_dir), bake=False)
    assert "tar -czf model.tar.gz -C model ." in (aws / "README.md").read_text()


def test_no_secret_is_ever_written(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_API_KEY", "sk-very-secret-value")
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret_value")
    for target in TARGETS:
        out = deploy(target, tmp_path / target, str(model_dir))
        for path in out.rglob("*"):
            if path.is_file() and "model" not in path.relative_to(out).parts[:1]:
                text = path.read_bytes()
                assert b"very-secret" not in text and b"very_secret" not in text, path
    k8s = (tmp_path / "k8s" / "k8s" / "deployment.yaml").read_text()
    assert "secretKeyRef" in k8s
    assert "secretKeyRef" in (tmp_path / "gcp" / "cloudrun.yaml").read_text()
    assert "keyVaultUrl" in (tmp_path / "azure" / "containerapp.yaml").read_text()


def test_hub_ids_and_gguf_files_are_served_as_they_are(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub = deploy("docker", tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert 'tuneforge serve "HuggingFaceTB/SmolLM2-135M-Instruct"' in (hub / "entrypoint.sh").read_text()
    assert not (hub / "model").exists()
    gguf = tmp_path / "chat.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    out = deploy("docker", tmp_path / "gguf", str(gguf))
    assert 'tuneforge serve "$MODEL_DIR/chat.Q8_0.gguf"' in (out / "entrypoint.sh").read_text()
    assert "TUNEFORGE_ENGINE=llamacpp" in (out / "Dockerfile").read_text()
    assert not (out / "Dockerfile.cuda").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "heroku"}, "--target 'heroku'"),
        ({"adapters": ["support=/nowhere/adapter"]}, "does not exist"),
        ({"adapters": ["support"]}, "NAME=PATH"),
        ({"adapters": ["bad name=."]}, "adapter name"),
        ({"name": "Tuneforge_Chat"}, "--name"),
        ({"engine": "vllm"}, "--gpu"),
        ({"engine": "tgi"}, "--engine 'tgi'"),
    ],
)
def test_bad_input_is_one_user_error_and_writes_nothing(tmp_path, model_dir, kwargs, message):
    args = {"target": "docker", "out": tmp_path / "bundle", "model": str(model_dir)} | kwargs
    with pytest.raises(UserError, match=message):
        deploy(**args)
    assert not (tmp_path / "bundle").exists()


def test_adapter_folder_without_adapter_config_is_refused(tmp_path, model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="adapter_config.json"):
        deploy("k8s", tmp_path / "out", str(model_dir), [f"a={empty}"])


def test_a_failed_rerun_keeps_the_previous_bundle(tmp_path, model_dir):
    out = deploy("docker", tmp_path / "bundle", str(model_dir))
    with pytest.raises(UserError):
        deploy("docker", out, str(model_dir), ["x=/missing"])
    assert (out / "Dockerfile").is_file()


def test_cli_writes_the_bundle(tmp_path, model_dir, adapter_dir, capsys):
    parser = argparse.ArgumentParser()
    cli_args.deploy(parser)
    args = parser.parse_args(["--target", "azure", "--out", str(tmp_path / "az"), "--model", str(model_dir),
                              "--adapter", f"{ADAPTER}={adapter_dir}", "--mount", "--gpu", "--name", "chat-vi"])
    assert deploy_cli.run(args) == 0
    dep = yaml.safe_load((tmp_path / "az" / "azureml" / "deployment.yml").read_text(encoding="utf-8"))
    assert dep["endpoint_name"] == "chat-vi" and dep["model_mount_path"] == "/models"
    assert dep["instance_type"] == "Standard_NC4as_T4_v3"
    assert "README.md" in capsys.readouterr().out


def test_field_checks_catch_what_the_vendors_refuse(tmp_path, model_dir):
    out = deploy("gcp", tmp_path / "gcp", str(model_dir), gpu=True)
    run = yaml.safe_load((out / "cloudrun.yaml").read_text())
    broken = copy.deepcopy(run)
    del broken["spec"]["template"]["spec"]["nodeSelector"]
    broken["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "PORT", "value": "1"})
    problems = check_cloud_run(broken)
    assert any("accelerator" in p for p in problems) and any("PORT is reserved" in p for p in problems)

    out = deploy("azure", tmp_path / "az", str(model_dir))
    dep = yaml.safe_load((out / "azureml" / "deployment.yml").read_text())
    del dep["environment"]["inference_config"]["scoring_route"]
    assert any("scoring_route" in p for p in check_azureml_deployment(dep))
    app = yaml.safe_load((out / "containerapp.yaml").read_text())
    app["properties"]["configuration"]["secrets"][0] = {"name": "api-key", "value": ""}
    app["properties"]["template"]["containers"][0]["resources"]["memory"] = "3Gi"
    assert len(check_containerapp(app)) == 2

    out = deploy("k8s", tmp_path / "k8s", str(model_dir))
    isvc = yaml.safe_load((out / "kserve" / "inferenceservice.yaml").read_text())
    isvc["spec"]["predictor"]["containers"] = []
    assert any("exactly one of" in p for p in check_kserve(isvc))


@pytest.fixture()
def gguf_file(tmp_path):
    path = tmp_path / "chat.Q8_0.gguf"
    path.write_bytes(b"GGUF" + bytes(60))  # the magic is all the bundle code looks at; it only copies the file
    return path


def test_a_text_file_named_gguf_is_refused(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model\n")
    with pytest.raises(UserError, match=r"--model .*fake\.gguf: not a GGUF file"):
        deploy("docker", tmp_path / "bundle", str(fake))
    assert not (tmp_path / "bundle").exists()


def test_out_holding_other_files_is_left_alone(tmp_path, gguf_file, monkeypatch):
    from tuneforge.deploy import bundle

    monkeypatch.setattr(bundle, "assemble_model", lambda *a: pytest.fail("refuse before copying the model"))
    out = tmp_path / "myproject"
    out.mkdir()
    (out / "notes.txt").write_text("a week of work")
    with pytest.raises(UserError, match=r"--out .*myproject holds other files .*; choose a new folder or empty it"):
        deploy("docker", out, str(gguf_file))
    assert (out / "notes.txt").read_text() == "a week of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.Q8_0.gguf", "myproject"]  # no temporary folder


def test_an_empty_folder_or_an_earlier_bundle_is_replaced(tmp_path, gguf_file):
    from tuneforge.deploy.bundle import MARKER

    out = tmp_path / "bundle"
    out.mkdir()
    deploy("docker", out, str(gguf_file))
    assert (out / MARKER).is_file() and (out / "compose.yaml").is_file()
    deploy("k8s", out, str(gguf_file))  # a bundle deploy wrote: replaced, not merged
    assert (out / "k8s" / "deployment.yaml").is_file() and not (out / "compose.yaml").exists()
    (out / MARKER).unlink()  # a bundle written before the marker: only bundle files, so still replaceable
    deploy("docker", out, str(gguf_file))
    assert (out / MARKER).is_file() and not (out / "k8s").exists()


def test_a_hand_written_service_with_bundle_like_names_is_left_alone(tmp_path, gguf_file):
    mine = tmp_path / "service"
    mine.mkdir()
    for name, text in {"Dockerfile": "FROM python:3.11\n", "entrypoint.sh": "#!/bin/sh\nexec python app.py\n",
                       "README.md": "my notes\n", "compose.yaml": "services: {}\n"}.items():
        (mine / name).write_text(text)
    with pytest.raises(UserError, match="holds other files"):
        deploy("docker", mine, str(gguf_file))
    assert (mine / "README.md").read_text() == "my notes\n"


@pytest.mark.parametrize("out, message", [
    ("afile", r"--out .*afile is a file, not a folder"),
    ("afile/sub/bundle", r"--out .*afile/sub/bundle: .*afile is a file, so no folder can be made under it"),
])
def test_out_that_is_or_lies_under_a_file_is_refused_up_front(tmp_path, gguf_file, monkeypatch, out, message):
    from tuneforge.deploy import bundle

    monkeypatch.setattr(bundle, "assemble_model", lambda *a: pytest.fail("refuse before copying the model"))
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(UserError, match=message):
        deploy("docker", tmp_path / out, str(gguf_file))
    assert (tmp_path / "afile").read_text() == "keep me"


def test_cli_refuses_a_folder_of_other_files_with_exit_2(tmp_path, gguf_file, capsys):
    from tuneforge.cli import main

    (tmp_path / "myproject").mkdir()
    (tmp_path / "myproject" / "notes.txt").write_text("notes")
    assert main(["deploy", "--target", "docker", "--out", str(tmp_path / "myproject"), "--model", str(gguf_file)]) == 2
    assert "error: --out" in capsys.readouterr().err
    assert (tmp_path / "myproject" / "notes.txt").is_file()
