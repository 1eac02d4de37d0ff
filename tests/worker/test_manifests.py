"""deploy/kubernetes: valid against the Kubernetes schemas (offline) and consistent with the
programs they run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from auth_service.server import SERVICE_NAME
from sync_worker import cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VALIDATOR = str(Path(sys.executable).with_name("kubernetes-validate"))


def documents() -> list[dict[str, Any]]:
    found = [
        document
        for path in sorted(DEPLOY.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if document
    ]
    assert found
    return found


def one(kind: str, name: str) -> dict[str, Any]:
    [document] = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return document


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for document in documents():
        spec = document.get("spec", {})
        if document["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            yield document["metadata"]["name"], spec["template"]["spec"]


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    # The wheel ships the schemas: no network is needed (nor available in CI).
    result = subprocess.run(
        [VALIDATOR, "--strict", *map(str, sorted(DEPLOY.glob("*.yaml")))],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(documents())


def test_the_validator_does_catch_a_broken_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = (DEPLOY / "auth-service.yaml").read_text(encoding="utf-8")
    broken.write_text(text.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem"))
    result = subprocess.run(
        [VALIDATOR, "--strict", str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


@pytest.mark.parametrize("name", ["garmin-auth", "garmin-auth-migrate", "garmin-sync-worker"])
def test_pods_run_unprivileged_on_a_read_only_root(name: str) -> None:
    spec = dict(pod_specs())[name]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        assert container["image"] == "garmin-auth:0.1.0"  # one image for both programs
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_the_auth_service_has_two_replicas_and_grpc_probes() -> None:
    deployment = one("Deployment", "garmin-auth")
    assert deployment["spec"]["replicas"] == 2
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": SERVICE_NAME}
    assert container["livenessProbe"]["grpc"]["port"] == 50051
    service = one("Service", "garmin-auth")
    assert service["spec"]["ports"][0]["port"] == 50051
    job = one("Job", "garmin-auth-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_the_worker_cronjob_never_overlaps_and_its_arguments_parse() -> None:
    cronjob = one("CronJob", "garmin-sync-worker")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["garmin-sync-worker"]
    args = cli._parser().parse_args(container["args"])
    assert args.all is True
    # --max-runtime stops taking users well before the Job's deadline sends SIGTERM, and the
    # grace period leaves time to release the leases.
    assert args.max_runtime.total_seconds() < job["activeDeadlineSeconds"] - 60
    assert pod["terminationGracePeriodSeconds"] >= 30
    env = {item["name"] for item in container["env"]}
    assert {
        "GARMIN_SYNC_AUTH_TARGET",
        "GARMIN_SYNC_AUTH_TOKEN",
        "GARMIN_SYNC_OUT",
    } <= env
    # The worker signs nothing: it holds access tokens only (issue 13).
    assert not any("CONSUMER" in name for name in env)


def test_every_secret_reference_exists_in_the_example_secrets() -> None:
    secrets = {
        d["metadata"]["name"]: set(d["stringData"]) for d in documents() if d["kind"] == "Secret"
    }
    for name, spec in pod_specs():
        for container in spec["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]], (name, item["name"])
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
