"""The Kubernetes manifests in deploy/kubernetes/ are valid, offline: each YAML file against the
Kubernetes JSON schemas that `kubernetes-validate` ships (strict: unknown fields are errors), the
kustomizations' file references, and the ConfigMaps' VOCODER_* keys against server/settings.py.
No cluster and no kustomize binary are needed; overlay patches are complete manifests themselves.
"""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # the dev extra; it ships the Kubernetes schemas
import pytest
import yaml

from server.metrics import ServiceMetrics
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
# The oldest schemas the package ships and the newest: the manifests use nothing newer than 1.25.
KUBERNETES_VERSIONS = ("1.25", kubernetes_validate.latest_version())
# Kubernetes' resource.Quantity, which the JSON schemas leave as a bare string or number.
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")

MANIFEST_FILES = sorted(path for path in MANIFESTS.rglob("*.yaml") if path.name != "kustomization.yaml")
KUSTOMIZATIONS = sorted(MANIFESTS.rglob("kustomization.yaml"))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def _problems(document: Any) -> list[str]:
    """Why `document` is not a valid Kubernetes object, against each schema version; empty if it is."""
    if not isinstance(document, dict) or "apiVersion" not in document or "kind" not in document:
        return ["not a Kubernetes object (no apiVersion and kind)"]
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            location = "/".join(map(str, error.absolute_path))
            problems.append(f"Kubernetes {version}: {location}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"Kubernetes {version}: no schema for {document['kind']} {document['apiVersion']}")
    for container in _containers(document):
        for kind, amounts in container.get("resources", {}).items():
            for resource, amount in amounts.items():
                if not QUANTITY.match(str(amount)):
                    problems.append(f"container {container.get('name')}: resources.{kind}.{resource}: "
                                    f"{amount!r} is not a Kubernetes quantity")
    return problems


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    if document.get("kind") != "Deployment":
        return []
    return document.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def _one(path: str, kind: str) -> dict[str, Any]:
    [document] = [doc for doc in _documents(MANIFESTS / path) if doc["kind"] == kind]
    return document


def test_there_are_manifests_and_overlays():
    names = {path.relative_to(MANIFESTS).as_posix() for path in MANIFEST_FILES}
    assert {"base/deployment.yaml", "base/service.yaml", "base/hpa.yaml", "base/configmap.yaml",
            "gpu/deployment.yaml", "queue-depth/hpa.yaml"} <= names
    assert {"base", "gpu", "queue-depth"} <= {path.parent.name for path in KUSTOMIZATIONS}


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda path: path.relative_to(MANIFESTS).as_posix())
def test_every_manifest_is_valid(path: Path):
    documents = _documents(path)
    assert documents, f"{path} holds no manifest"
    for document in documents:
        problems = _problems(document)
        assert not problems, "\n".join(problems)


# Ways to break the base Deployment: (document, its container) -> None.
BREAKAGES = {
    "misspelt field": lambda d, c: c.update(readinessprobe=c.pop("readinessProbe")),
    "missing selector": lambda d, c: d["spec"].pop("selector"),
    "port as a string": lambda d, c: c["ports"][0].update(containerPort="8000"),
    "bad quantity": lambda d, c: c["resources"]["limits"].update(memory="1.5 GB"),
    "unknown apiVersion": lambda d, c: d.update(apiVersion="apps/v1beta1"),
    "no kind": lambda d, c: d.pop("kind"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_manifest_is_caught(breakage: str):
    document = copy.deepcopy(_one("base/deployment.yaml", "Deployment"))
    BREAKAGES[breakage](document, _containers(document)[0])
    assert _problems(document) != []


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda path: path.parent.name)
def test_kustomizations_name_files_that_exist(path: Path):
    kustomization = yaml.safe_load(path.read_text())
    entries = kustomization.get("resources", []) + [patch["path"] for patch in kustomization.get("patches", [])]
    assert entries
    for entry in entries:
        assert (path.parent / entry).exists(), f"{path}: {entry} does not exist"


@pytest.mark.parametrize("path", ["base/configmap.yaml", "gpu/configmap.yaml"])
def test_configmaps_hold_real_settings_with_valid_values(path: str, monkeypatch):
    data = _one(path, "ConfigMap")["data"]
    known = {f"VOCODER_{name.upper()}" for name in Settings.model_fields}
    # pydantic-settings ignores an unknown VOCODER_* variable, so a misspelt key would do nothing.
    assert set(data) <= known, f"not settings: {sorted(set(data) - known)}"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    Settings()


def test_probes_and_scaling_use_the_service_endpoints_and_metric():
    container = _containers(_one("base/deployment.yaml", "Deployment"))[0]
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    [pods_metric] = [m for m in _one("queue-depth/hpa.yaml", "HorizontalPodAutoscaler")["spec"]["metrics"]
                     if m["type"] == "Pods"]
    name = pods_metric["pods"]["metric"]["name"]
    assert f"# TYPE {name} gauge" in ServiceMetrics().render().decode()


@pytest.mark.kubectl
@pytest.mark.parametrize("overlay", ["base", "gpu", "queue-depth"])
def test_rendered_overlays_are_valid(overlay: str):
    """What `kubectl apply -k` would send (marked `kubectl`: run with `-m kubectl` where kubectl,
    with its built-in kustomize, is installed; without it the test fails)."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "the kubectl-marked tests need kubectl on PATH"
    rendered = subprocess.run([kubectl, "kustomize", str(MANIFESTS / overlay)], capture_output=True,
                              text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    documents = [document for document in yaml.safe_load_all(rendered.stdout) if document is not None]
    assert {document["kind"] for document in documents} == {
        "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    for document in documents:
        problems = _problems(document)
        assert not problems, f"{overlay}, {document['kind']}:\n" + "\n".join(problems)
