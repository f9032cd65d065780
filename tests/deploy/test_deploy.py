"""The deployment files as a Kafka and Kubernetes team would use them, checked without a Docker engine
or a cluster: manifests rendered (``kubectl kustomize``) and validated against the Kubernetes schemas,
the compose file's services and settings, and every command the images run present in the CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from scoring.settings import FluxscoreSettings, documented_table, env_name

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.32.0"
ROLES = ("prefilter", "probe", "model", "selector", "oracle", "monitor", "shadow")


def known_variables() -> set[str]:
    documented_table()  # imports every settings module
    names: set[str] = set()
    for cls in FluxscoreSettings.registry:
        for field, info in cls.model_fields.items():
            names.add(env_name(cls, field))
            alias = info.validation_alias
            names.update(c for c in getattr(alias, "choices", ()) if isinstance(c, str))
    return names


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders kustomize overlays)")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_manifest_is_valid_kubernetes(overlay: str) -> None:
    import kubernetes_validate

    docs = render(overlay)
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            # A CRD: no schema ships with kubernetes-validate; its shape is checked below.
            spec = doc["spec"]
            assert spec["scaleTargetRef"]["name"] in by_kind(docs, "Deployment")
            assert {t["type"] for t in spec["triggers"]} == {"kafka", "cpu"}
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {f"fluxscore-{r}" for r in ROLES} | {"fluxscore-annotate"}
    assert all(d["metadata"]["namespace"] == "fluxscore" for d in docs if d["kind"] != "Namespace")
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert {"requests", "limits"} <= container["resources"].keys(), name
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            if name != "fluxscore-annotate":
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Secret", "Job", "PodDisruptionBudget", "NetworkPolicy", "Service"} <= kinds


def test_the_gpu_overlay_puts_the_model_role_on_gpu_nodes_and_scales_on_lag() -> None:
    docs = render("gpu")
    model = by_kind(docs, "Deployment")["fluxscore-model"]["spec"]["template"]["spec"]
    (worker,) = model["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["image"].startswith("fluxscore-worker-cuda")
    assert model["nodeSelector"] and model["tolerations"][0]["key"] == "nvidia.com/gpu"
    scaled = by_kind(docs, "ScaledObject")
    assert {s["spec"]["triggers"][0]["metadata"]["topic"] for s in scaled.values()} == {
        "articles.raw", "articles.screened", "articles.escalated"}
    assert not by_kind(docs, "HorizontalPodAutoscaler"), "KEDA owns the autoscaling here"


def test_the_cpu_overlay_uses_cpu_autoscalers_instead_of_keda() -> None:
    docs = render("cpu")
    assert not by_kind(docs, "ScaledObject")
    assert set(by_kind(docs, "HorizontalPodAutoscaler")) == {"fluxscore-prefilter", "fluxscore-probe",
                                                              "fluxscore-model"}
    model = by_kind(docs, "Deployment")["fluxscore-model"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in model["resources"]["limits"]


def _commands() -> list[list[str]]:
    """Every fluxscore command line the images, compose services and manifests run."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    lines = [s["command"] for s in compose["services"].values()
             if isinstance(s.get("command"), list) and not s.get("image", "").startswith(("apache", "redis",
                                                                                          "postgres", "prom"))]
    for overlay in ("cpu", "gpu"):
        for doc in render(overlay):
            if doc["kind"] in ("Deployment", "Job"):
                lines += [c["args"] for c in doc["spec"]["template"]["spec"]["containers"]]
    cmd = re.search(r'^CMD \[(.*)\]$', (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd is not None
    lines.append([part.strip().strip('"') for part in cmd.group(1).split(",")])
    return lines


def test_every_command_the_deployment_runs_exists_in_the_cli() -> None:
    from scoring.entry import build_app
    from streams.settings import parse_roles

    app, missing = build_app()
    assert missing == [], f"parts that do not import: {missing}"
    runner = CliRunner()
    for line in _commands():
        words = [w for w in line if not w.startswith("-")]
        path = words[:2] if words[0] in ("annotate", "topics") else words[:1]
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"`fluxscore {' '.join(path)}` is not a command: {result.output}"
        if "--role" in line:
            parse_roles(line[line.index("--role") + 1])


def test_compose_runs_every_role_with_healthchecks_and_a_gpu_for_the_model() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {f"worker-{r}" for r in ROLES} | {"kafka", "redis", "postgres", "topics", "annotate",
                                             "prometheus"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"], "Kafka in KRaft mode"
    assert "--appendonly" in services["redis"]["command"], "Redis persists (idempotency relies on it)"
    gpu = services["worker-model"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    for name, service in services.items():
        if name != "topics":
            assert "healthcheck" in service, name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    scraped = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]["static_configs"][0]
    assert {t.split(":")[0] for t in scraped["targets"]} == {f"worker-{r}" for r in ROLES}


def test_every_variable_the_deployment_sets_is_a_documented_setting() -> None:
    known = known_variables()
    texts = [(DEPLOY / "worker.env.example").read_text(), (REPO / "docker-compose.yml").read_text(),
             (DEPLOY / "Dockerfile").read_text(), *(p.read_text() for p in (DEPLOY / "k8s").rglob("*.yaml"))]
    used = {m for text in texts for m in re.findall(r"\b(FLUXSCORE_[A-Z0-9_]+)", text)}
    assert used - known == set(), "variables the settings classes do not define"
    readme = (REPO / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in used)
