"""Offline checks of a bundle's platform files against the fields their vendors' documentation requires.

No validator ships offline for these formats, so each rule below restates the vendor's reference page:
- KServe InferenceService (a CRD, not in kubernetes-validate's schemas): KServe's v1beta1 API reference:
  spec.predictor with either a model spec or custom `containers` (one container named kserve-container).
- Cloud Run service YAML: Cloud Run's "YAML reference" (serving.knative.dev/v1 Service) and "GPU support for
  services" pages: one ingress container with one containerPort, PORT and K_* env names reserved, a GPU needs
  nodeSelector run.googleapis.com/accelerator, at least 4 CPU and 16 GiB, and CPU always allocated.
- Azure ML managed online endpoint/deployment: the CLI (v2) YAML schema reference pages (name, auth_mode;
  name, endpoint_name, environment image + inference_config routes for a custom container, instance_type,
  instance_count).
- Azure Container Apps: the "YAML configuration" reference (managedEnvironmentId, containers with name and
  image, ingress targetPort, secretRef names declared in configuration.secrets, consumption CPU/memory pairs).
Kubernetes built-in kinds, CloudFormation, Dockerfiles and compose.yaml are checked by real tools in the tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

AZUREML_SCHEMAS = {
    "endpoint": "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json",
    "deployment": "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json",
}
DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
CLOUD_RUN_RESERVED_ENV = {"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"}
CLOUD_RUN_GPUS = {"nvidia-l4", "nvidia-rtx-pro-6000"}


def dig(doc, path: str, problems: list[str], where: str, kind=None):
    """Return doc[a][b]... for path 'a.b'; record a problem naming the missing key."""
    node = doc
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            problems.append(f"{where}: required key '{path}' is missing")
            return None
        node = node[key]
    if kind is not None and not isinstance(node, kind):
        problems.append(f"{where}: '{path}' must be {kind.__name__ if isinstance(kind, type) else kind}")
        return None
    return node


def check_kserve(doc: dict, where: str = "inferenceservice.yaml") -> list[str]:
    problems: list[str] = []
    if doc.get("apiVersion") != "serving.kserve.io/v1beta1" or doc.get("kind") != "InferenceService":
        problems.append(f"{where}: must be apiVersion serving.kserve.io/v1beta1, kind InferenceService")
    name = dig(doc, "metadata.name", problems, where, str)
    if name and not DNS_LABEL.match(name):
        problems.append(f"{where}: metadata.name '{name}' is not a DNS-1123 label")
    predictor = dig(doc, "spec.predictor", problems, where, dict)
    if predictor is not None:
        containers = predictor.get("containers")
        if bool(containers) == ("model" in predictor):
            problems.append(f"{where}: spec.predictor needs exactly one of 'model' or 'containers'")
        for i, c in enumerate(containers or []):
            if not c.get("image"):
                problems.append(f"{where}: spec.predictor.containers[{i}].image is required")
        if containers and containers[0].get("name") != "kserve-container":
            problems.append(f"{where}: the serving container must be named kserve-container")
        lo = predictor.get("minReplicas", 1)
        hi = predictor.get("maxReplicas", lo)
        if hi < lo:
            problems.append(f"{where}: maxReplicas {hi} < minReplicas {lo}")
    return problems


def kserve_predictor_as_pod(doc: dict) -> dict:
    """The predictor's pod part as a Pod, so kubernetes-validate can check containers, probes and resources."""
    extension_keys = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                      "timeout", "canaryTrafficPercent", "logger", "batcher", "model"}
    spec = {k: v for k, v in doc["spec"]["predictor"].items() if k not in extension_keys}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": doc["metadata"]["name"]}, "spec": spec}


def check_cloud_run(doc: dict, where: str = "cloudrun.yaml") -> list[str]:
    problems: list[str] = []
    if doc.get("apiVersion") != "serving.knative.dev/v1" or doc.get("kind") != "Service":
        problems.append(f"{where}: must be apiVersion serving.knative.dev/v1, kind Service")
    name = dig(doc, "metadata.name", problems, where, str)
    if name and (not DNS_LABEL.match(name) or len(name) > 49):
        problems.append(f"{where}: metadata.name '{name}' must be a DNS label of at most 49 characters")
    for key in (doc.get("metadata") or {}).get("labels") or {}:
        if not re.match(r"^[a-z][a-z0-9_-]{0,62}$", key):  # Google Cloud label keys: no '.' or '/'
            problems.append(f"{where}: label key '{key}' must be lower-case letters, digits, '_' or '-'")
    spec = dig(doc, "spec.template.spec", problems, where, dict) or {}
    annotations = (doc.get("spec", {}).get("template", {}).get("metadata") or {}).get("annotations") or {}
    containers = spec.get("containers") or []
    if not containers:
        problems.append(f"{where}: spec.template.spec.containers needs one container")
    ingress = [c for c in containers if c.get("ports")]
    if len(ingress) != 1 or len(ingress[0]["ports"]) != 1:
        problems.append(f"{where}: exactly one container must declare exactly one port (the one Cloud Run sends requests to)")
    for c in containers:
        if not c.get("image"):
            problems.append(f"{where}: every container needs an image")
        for env in c.get("env") or []:
            if env.get("name") in CLOUD_RUN_RESERVED_ENV:
                problems.append(f"{where}: env {env['name']} is reserved and set by Cloud Run")
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None and not (ref.get("name") and ref.get("key")):
                problems.append(f"{where}: env {env.get('name')} secretKeyRef needs the secret's name and a version key")
        limits = (c.get("resources") or {}).get("limits") or {}
        if "nvidia.com/gpu" in limits:
            accel = (spec.get("nodeSelector") or {}).get("run.googleapis.com/accelerator")
            if accel not in CLOUD_RUN_GPUS:
                problems.append(f"{where}: a GPU needs nodeSelector run.googleapis.com/accelerator in {sorted(CLOUD_RUN_GPUS)}")
            if float(limits.get("cpu", 0)) < 4 or gibibytes(limits.get("memory", "0")) < 16:
                problems.append(f"{where}: a GPU instance needs at least 4 CPU and 16Gi memory")
            if annotations.get("run.googleapis.com/cpu-throttling") != "false":
                problems.append(f"{where}: a GPU needs run.googleapis.com/cpu-throttling: 'false' (CPU always allocated)")
        for probe in ("startupProbe", "livenessProbe"):
            if probe in c and not (c[probe].get("httpGet") or {}).get("path", "").startswith("/"):
                problems.append(f"{where}: {probe}.httpGet.path must be an absolute path")
    return problems


def check_azureml_endpoint(doc: dict, where: str = "azureml/endpoint.yml") -> list[str]:
    problems: list[str] = []
    if doc.get("$schema") != AZUREML_SCHEMAS["endpoint"]:
        problems.append(f"{where}: $schema must be {AZUREML_SCHEMAS['endpoint']}")
    name = dig(doc, "name", problems, where, str)
    if name and not re.match(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$", name):
        problems.append(f"{where}: name '{name}' must be 3-32 letters, digits or '-', starting with a letter")
    if doc.get("auth_mode", "key") not in ("key", "aml_token", "aad_token"):
        problems.append(f"{where}: auth_mode must be key, aml_token or aad_token")
    return problems


def check_azureml_deployment(doc: dict, where: str = "azureml/deployment.yml") -> list[str]:
    problems: list[str] = []
    if doc.get("$schema") != AZUREML_SCHEMAS["deployment"]:
        problems.append(f"{where}: $schema must be {AZUREML_SCHEMAS['deployment']}")
    for key in ("name", "endpoint_name", "instance_type", "environment.image"):
        dig(doc, key, problems, where, str)
    count = dig(doc, "instance_count", problems, where, int)
    if count is not None and count < 1:
        problems.append(f"{where}: instance_count must be at least 1")
    for route in ("liveness_route", "readiness_route", "scoring_route"):
        r = dig(doc, f"environment.inference_config.{route}", problems, where, dict)
        if r is not None and not (isinstance(r.get("port"), int) and str(r.get("path", "")).startswith("/")):
            problems.append(f"{where}: environment.inference_config.{route} needs an integer port and a path starting with /")
    if isinstance(doc.get("model"), dict) and not str(doc.get("model_mount_path", "")).startswith("/"):
        problems.append(f"{where}: an inline model needs model_mount_path (an absolute path in the container)")
    return problems


def check_containerapp(doc: dict, where: str = "containerapp.yaml") -> list[str]:
    problems: list[str] = []
    props = dig(doc, "properties", problems, where, dict) or {}
    if not props.get("managedEnvironmentId") and not props.get("environmentId"):
        problems.append(f"{where}: properties.managedEnvironmentId is required")
    containers = (props.get("template") or {}).get("containers") or []
    if not containers:
        problems.append(f"{where}: properties.template.containers needs one container")
    declared = {s.get("name") for s in (props.get("configuration") or {}).get("secrets") or []}
    for s in (props.get("configuration") or {}).get("secrets") or []:
        if not s.get("value") and not (s.get("keyVaultUrl") and s.get("identity")):
            problems.append(f"{where}: secret {s.get('name')} needs keyVaultUrl and identity (values never go in the file)")
    for c in containers:
        if not (c.get("name") and c.get("image")):
            problems.append(f"{where}: every container needs a name and an image")
        for env in c.get("env") or []:
            if "secretRef" in env and env["secretRef"] not in declared:
                problems.append(f"{where}: env {env.get('name')} refers to undeclared secret {env['secretRef']}")
        res = c.get("resources") or {}
        if not props.get("workloadProfileName") and gibibytes(res.get("memory", "0")) != 2 * float(res.get("cpu", 0)):
            problems.append(f"{where}: on the consumption plan memory must be twice the CPU count in Gi")
        for probe in c.get("probes") or []:
            if probe.get("type") not in ("Liveness", "Readiness", "Startup"):
                problems.append(f"{where}: probe type must be Liveness, Readiness or Startup")
    ingress = (props.get("configuration") or {}).get("ingress")
    if ingress is not None and not isinstance(ingress.get("targetPort"), int):
        problems.append(f"{where}: configuration.ingress.targetPort must be the container's port")
    scale = (props.get("template") or {}).get("scale") or {}
    if scale.get("maxReplicas", 10) < scale.get("minReplicas", 0):
        problems.append(f"{where}: scale.maxReplicas < minReplicas")
    return problems


def gibibytes(quantity) -> float:
    """'16Gi' -> 16.0; '512Mi' -> 0.5 (Kubernetes-style quantities, as Cloud Run and Azure write them)."""
    m = re.fullmatch(r"([0-9.]+)\s*(Gi|Mi|G|M)?", str(quantity))
    if not m:
        return 0.0
    scale = {"Gi": 1, "G": 1, "Mi": 1 / 1024, "M": 1 / 1024, None: 2**-30}[m.group(2)]
    return float(m.group(1)) * scale


CHECKS = {
    "kserve/inferenceservice.yaml": check_kserve,
    "cloudrun.yaml": check_cloud_run,
    "azureml/endpoint.yml": check_azureml_endpoint,
    "azureml/deployment.yml": check_azureml_deployment,
    "containerapp.yaml": check_containerapp,
}


def check_files(files: dict[str, str]) -> list[str]:
    """Check rendered files (bundle path -> text): every YAML parses, and the vendor rules above hold."""
    problems: list[str] = []
    for rel, text in files.items():
        if not rel.endswith((".yaml", ".yml")) or rel == "cloudformation.yaml":  # CloudFormation tags: cfn-lint's job
            continue
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            problems.append(f"{rel}: not valid YAML: {e}")
            continue
        if rel in CHECKS:
            for doc in docs:
                problems += CHECKS[rel](doc, rel)
    return problems


def check_bundle(folder: str | Path) -> list[str]:
    folder = Path(folder)
    files = {str(p.relative_to(folder)): p.read_text(encoding="utf-8")
             for p in folder.rglob("*.y*ml") if "model" not in p.relative_to(folder).parts[:1]}
    return check_files(files)
