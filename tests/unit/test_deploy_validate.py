"""Bundles checked by the real offline validators: hadolint, cfn-lint, kubernetes-validate, the compose schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from tuneforge.deploy import deploy
from tuneforge.deploy.checks import kserve_predictor_as_pod

VARIANTS = [(gpu, bake) for gpu in (False, True) for bake in (True, False)]
IDS = [f"{'gpu' if g else 'cpu'}-{'bake' if b else 'mount'}" for g, b in VARIANTS]


def tool(name: str) -> str:
    """The validator next to this interpreter (the test extra installs it), else on PATH."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e .[test])")
    return found


@pytest.fixture(scope="module")
def model_and_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    (root / "adapter").mkdir()
    (root / "adapter" / "adapter_config.json").write_text("{}")
    return str(root / "model"), {"tóm-tắt": str(root / "adapter")}


def bundle(tmp_path, model_and_adapter, target, gpu, bake):
    model, adapters = model_and_adapter
    return deploy(target, tmp_path / target, model, adapters, gpu=gpu, bake=bake)


@pytest.mark.parametrize("gpu, bake", VARIANTS, ids=IDS)
def test_dockerfiles_pass_hadolint(tmp_path, model_and_adapter, gpu, bake):
    hadolint = tool("hadolint")
    out = bundle(tmp_path, model_and_adapter, "docker", gpu, bake)
    for name in ("Dockerfile", "Dockerfile.cuda"):
        run = subprocess.run([hadolint, "--no-color", str(out / name)], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_does_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /app && pip install x\n")
    assert subprocess.run([tool("hadolint"), str(bad)], capture_output=True).returncode != 0


def test_cloudformation_passes_cfn_lint(tmp_path, model_and_adapter):
    cfn_lint = tool("cfn-lint")
    templates = []
    for (gpu, bake), name in zip(VARIANTS, IDS, strict=True):
        out = bundle(tmp_path / name, model_and_adapter, "aws", gpu, bake)
        templates.append(str(out / "cloudformation.yaml"))
        text = (out / "cloudformation.yaml").read_text()
        for kind in ("AWS::IAM::Role", "AWS::SageMaker::Model", "AWS::SageMaker::EndpointConfig", "AWS::SageMaker::Endpoint"):
            assert kind in text
    run = subprocess.run([cfn_lint, *templates], capture_output=True, text=True)  # one start: cfn-lint loads slowly
    assert run.returncode == 0, run.stdout + run.stderr


def test_cfn_lint_does_catch_a_broken_template(tmp_path, model_and_adapter):
    out = bundle(tmp_path, model_and_adapter, "aws", False, True)
    broken = tmp_path / "broken.yaml"
    broken.write_text((out / "cloudformation.yaml").read_text().replace("InitialInstanceCount:", "InitialInstances:"))
    assert subprocess.run([tool("cfn-lint"), str(broken)], capture_output=True).returncode != 0


@pytest.mark.parametrize("gpu, bake", VARIANTS, ids=IDS)
def test_kubernetes_manifests_pass_kubernetes_validate(tmp_path, model_and_adapter, gpu, bake):
    kv = pytest.importorskip("kubernetes_validate")
    out = bundle(tmp_path, model_and_adapter, "k8s", gpu, bake)
    paths = sorted(out.glob("k8s/*.yaml")) + sorted(out.glob("model-loader.yaml"))
    kinds = set()
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            kinds.add(doc["kind"])
            kv.validate(doc, kv.latest_version(), strict=True)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds
    assert ("PersistentVolumeClaim" in kinds) == (not bake)
    # KServe's InferenceService is a CRD: its required fields are checked in checks.py; its pod part here.
    isvc = yaml.safe_load((out / "kserve" / "inferenceservice.yaml").read_text(encoding="utf-8"))
    kv.validate(kserve_predictor_as_pod(isvc), kv.latest_version(), strict=True)


def test_kubernetes_validate_does_catch_a_typo(tmp_path, model_and_adapter):
    kv = pytest.importorskip("kubernetes_validate")
    out = bundle(tmp_path, model_and_adapter, "k8s", False, True)
    doc = yaml.safe_load((out / "k8s" / "deployment.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, kv.latest_version(), strict=True)


@pytest.mark.parametrize("gpu, bake", VARIANTS, ids=IDS)
def test_compose_file_matches_the_compose_spec(tmp_path, model_and_adapter, gpu, bake):
    jsonschema = pytest.importorskip("jsonschema")
    # compose_spec.json as shipped in the docker-compose 1.29.2 wheel on PyPI (Apache-2.0).
    schema = json.loads((files("tuneforge.deploy") / "schemas" / "compose_spec.json").read_text(encoding="utf-8"))
    out = bundle(tmp_path, model_and_adapter, "docker", gpu, bake)
    compose = yaml.safe_load((out / "compose.yaml").read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    validator.validate(compose)
    assert compose["services"]["chat"]["healthcheck"]["test"][0] == "CMD"
    compose["services"]["chat"]["helthcheck"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(compose)


@pytest.mark.parametrize("target", ["gcp", "k8s"])
def test_shell_scripts_parse(tmp_path, model_and_adapter, target):
    out = bundle(tmp_path, model_and_adapter, target, False, True)
    for script in [out / "entrypoint.sh", *out.glob("vertex-deploy.sh")]:
        run = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
