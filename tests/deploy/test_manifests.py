"""deploy/kubernetes: each kustomization, rendered as `kubectl apply -k` would send it, is valid
against the Kubernetes schemas (offline), keeps the secure shape issue 14 asked for, and agrees
with the programs it runs.

The renderer is the pinned kubectl that scripts/test installs under .tools/bin."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from auth_service.config import mfa_claim_seconds
from auth_service.domain.policies import KNOWN_DI_CLIENT_IDS
from garmin_client.settings import UpstreamSettings
from sync_worker import cli
from tests.fixtures.certificates import Authority

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
VALIDATOR = str(Path(sys.executable).with_name("kubernetes-validate"))
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/production")
# What a deployment must never weaken: these two are deployed; the base is only their source.
DEPLOYED = ("overlays/dev", "overlays/production")
DIGEST_PINNED = ("base", "overlays/production")
SECRET_MOUNT = "/var/run/secrets/garmin-auth"
HEALTH_PORT = 8081
Doc = dict[str, Any]


@cache
def rendered_text(kustomization: str) -> str:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: scripts/test installs it (ensure_kubectl)")
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / kustomization)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def rendered(kustomization: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(rendered_text(kustomization)) if d]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) of every Deployment, Job and CronJob."""
    for document in docs:
        spec = document.get("spec", {})
        if document["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            yield document, spec["template"]


def containers(pod: Doc) -> list[Doc]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def config(docs: list[Doc]) -> dict[str, str]:
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    return dict(config_map["data"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_each_kustomization_renders_valid_against_the_kubernetes_schemas(
    kustomization: str, tmp_path: Path
) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered_text(kustomization), encoding="utf-8")
    # The wheel ships the schemas: no network is needed.
    result = subprocess.run(
        [VALIDATOR, "--strict", str(path), str(DEPLOY / "secrets.example.yaml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every document was checked, the cert-manager Certificate (no schema there) aside.
    certificates = sum(d["kind"] == "Certificate" for d in rendered(kustomization))
    assert result.stdout.count("passed") == len(rendered(kustomization)) - certificates + 5


def test_the_validator_does_catch_a_broken_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = rendered_text("overlays/production")
    broken.write_text(text.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem"))
    result = subprocess.run(
        [VALIDATOR, "--strict", str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_runs_unprivileged_on_a_read_only_root_with_limits(kustomization: str) -> None:
    docs = rendered(kustomization)
    for workload, pod in pod_templates(docs):
        spec = pod["spec"]
        assert workload["metadata"]["namespace"] not in {"", "default"}
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] != "default"
        for container in containers(pod):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "add" not in context["capabilities"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
            assert container["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("kustomization", DIGEST_PINNED)
def test_images_are_pinned_by_digest(kustomization: str) -> None:
    for _, pod in pod_templates(rendered(kustomization)):
        for container in containers(pod):
            name, at, digest = container["image"].partition("@sha256:")
            assert at, container["image"]
            assert name.endswith("garmin-auth")  # one image for both programs
            assert len(digest) == 64
            assert all(c in "0123456789abcdef" for c in digest)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_secret_is_an_environment_variable(kustomization: str) -> None:
    docs = rendered(kustomization)
    for workload, pod in pod_templates(docs):
        for container in containers(pod):
            where = (workload["metadata"]["name"], container["name"])
            for item in container.get("env", []):
                assert "secretKeyRef" not in item.get("valueFrom", {}), where
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, where
    # The service's secrets are files in the secrets volume; the ConfigMap only names them.
    settings = config(docs)
    for name in ("ENCRYPTION_KEYS", "DATABASE_URL", "OAUTH_CONSUMER_KEY", "OAUTH_CONSUMER_SECRET"):
        assert f"GARMIN_AUTH_{name}" not in settings
        assert settings[f"GARMIN_AUTH_{name}_FILE"].startswith(SECRET_MOUNT + "/")
    assert settings["GARMIN_AUTH_CALLERS_FILE"].startswith(SECRET_MOUNT + "/")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_service_is_probed_on_its_health_listener(kustomization: str) -> None:
    docs = rendered(kustomization)
    deployment = one(docs, "Deployment", "garmin-auth")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]
    liveness = {"port": HEALTH_PORT, "service": "liveness"}
    assert container["livenessProbe"]["grpc"] == liveness
    assert container["startupProbe"]["grpc"] == liveness
    assert container["readinessProbe"]["grpc"] == {"port": HEALTH_PORT, "service": "readiness"}
    settings = config(docs)
    assert settings["GARMIN_AUTH_HEALTH_LISTEN"] == f"0.0.0.0:{HEALTH_PORT}"
    assert float(settings["GARMIN_AUTH_MAX_CONNECTION_AGE"]) > 0
    assert settings["GARMIN_AUTH_REFLECTION"] == "authenticated"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": 50051, "health": HEALTH_PORT, "metrics": 9090}
    # The health port is for the kubelet only: the Service does not expose it.
    service = one(docs, "Service", "garmin-auth")
    assert HEALTH_PORT not in {port["port"] for port in service["spec"]["ports"]}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_service_pod_outlives_a_stop_that_stores_what_garmin_issued(
    kustomization: str,
) -> None:
    """A graceful stop takes the grace period, then waits for sessions Garmin is issuing
    (server.issued_wait_seconds: at most an MFA sign-in's calls at their worst, the refresh
    claim's Garmin part is shorter). SIGKILL before that would drop a rotated pair."""
    docs = rendered(kustomization)
    pod = one(docs, "Deployment", "garmin-auth")["spec"]["template"]["spec"]
    settings = config(docs)
    upstream = UpstreamSettings(
        consumer_key="k",
        consumer_secret="s",
        timeout_seconds=float(settings.get("GARMIN_AUTH_UPSTREAM_TIMEOUT", 10.0)),
        retries=int(settings.get("GARMIN_AUTH_UPSTREAM_RETRIES", 2)),
    )
    grace = float(settings["GARMIN_AUTH_GRACE_PERIOD"])
    issued = mfa_claim_seconds(upstream, KNOWN_DI_CLIENT_IDS)
    assert pod["terminationGracePeriodSeconds"] >= grace + issued + 5


def test_production_serves_tls_from_the_certificate_cert_manager_writes() -> None:
    docs = rendered("overlays/production")
    settings = config(docs)
    assert settings["GARMIN_AUTH_ENVIRONMENT"] == "production"
    pod = one(docs, "Deployment", "garmin-auth")["spec"]["template"]["spec"]
    [tls] = [volume for volume in pod["volumes"] if volume["name"] == "tls"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls"]
    paths = {item["key"]: f"{mount['mountPath']}/{item['path']}" for item in tls["secret"]["items"]}
    assert settings["GARMIN_AUTH_TLS_CERT"] == paths["tls.crt"]
    assert settings["GARMIN_AUTH_TLS_KEY"] == paths["tls.key"]
    certificate = one(docs, "Certificate", "garmin-auth-tls")
    assert certificate["spec"]["secretName"] == tls["secret"]["secretName"]
    assert "server auth" in certificate["spec"]["usages"]
    # The worker dials a name the certificate carries, and trusts only its CA.
    worker = one(docs, "CronJob", "garmin-sync-worker")
    worker_pod = worker["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in worker_pod["containers"][0]["env"]}
    host = env["GARMIN_SYNC_AUTH_TARGET"].removeprefix("dns:///").rpartition(":")[0]
    assert host in certificate["spec"]["dnsNames"]
    [ca] = [volume for volume in worker_pod["volumes"] if volume["name"] == "ca"]
    assert ca["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert ca["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert env["GARMIN_SYNC_TLS_CA"].endswith("/ca.crt")
    # Its own namespace, under the restricted Pod Security Standard.
    namespace = one(docs, "Namespace", "garmin-auth")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "garmin-auth"
    }


def test_dev_is_plaintext_and_says_so() -> None:
    docs = rendered("overlays/dev")
    settings = config(docs)
    assert settings["GARMIN_AUTH_TLS_CERT"] == settings["GARMIN_AUTH_TLS_KEY"] == ""
    assert settings["GARMIN_AUTH_ENVIRONMENT"] != "production"
    namespace = one(docs, "Namespace", "garmin-auth-dev")
    assert "plaintext" in namespace["metadata"]["labels"]["garmin-auth/transport"]
    assert "PLAINTEXT" in (DEPLOY / "overlays" / "dev" / "kustomization.yaml").read_text()
    worker = one(docs, "CronJob", "garmin-sync-worker")
    [container] = worker["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "GARMIN_SYNC_TLS_CA" not in {item["name"] for item in container["env"]}


@pytest.mark.parametrize("kustomization", DEPLOYED)
def test_network_policies_admit_only_workers_admin_backend_and_prometheus(
    kustomization: str,
) -> None:
    docs = rendered(kustomization)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    # A default deny, and every pod is selected by a policy of its own.
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies)
    for _, pod in pod_templates(docs):
        labels = pod["metadata"]["labels"]
        assert any(
            set(p["spec"]["podSelector"].get("matchLabels", {}).items()) <= set(labels.items())
            and p["spec"]["podSelector"]
            for p in policies
        ), labels
    [service_policy] = [p for p in policies if p["metadata"]["name"] == "garmin-auth"]
    admitted = {
        (rule["ports"][0]["port"], str(source))
        for rule in service_policy["spec"]["ingress"]
        for source in rule["from"]
    }
    assert {port for port, _ in admitted} == {50051, 9090}
    sources = " ".join(source for _, source in admitted)
    assert "garmin-sync-worker" in sources
    assert "admin-backend" in sources
    assert "prometheus" in sources
    for policy in policies:
        if policy["metadata"]["name"] != "garmin-auth":
            assert "ingress" not in policy["spec"]


@pytest.mark.parametrize("kustomization", DEPLOYED)
def test_replicas_survive_a_drain_and_spread_over_nodes(kustomization: str) -> None:
    docs = rendered(kustomization)
    deployment = one(docs, "Deployment", "garmin-auth")
    budget = one(docs, "PodDisruptionBudget", "garmin-auth")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    by_node = [c for c in spread if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node[0]["whenUnsatisfiable"] == "DoNotSchedule"
    if kustomization == "overlays/production":
        assert deployment["spec"]["replicas"] >= 3


def test_the_worker_cronjob_never_overlaps_and_its_settings_load(tmp_path: Path) -> None:
    from garmin_client.env import EnvReader  # noqa: PLC0415
    from sync_worker.config import auth_client_config  # noqa: PLC0415

    docs = rendered("overlays/production")
    cronjob = one(docs, "CronJob", "garmin-sync-worker")
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
    env = {item["name"]: item["value"] for item in container["env"]}
    # The worker signs nothing: it holds access tokens only (issue 13).
    assert not any("CONSUMER" in name for name in env)
    # The worker accepts these settings: each mounted path is replaced by a file in tmp_path.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    local = {}
    for name, value in env.items():
        directory = value.rpartition("/")[0]
        if directory in mounts and mounts[directory] in {"token", "ca"}:
            path = tmp_path / value.rpartition("/")[2]
            if mounts[directory] == "ca":
                path.write_bytes(Authority.create("the service's CA").pem)  # a real PEM
            else:
                path.write_text("token-from-a-mounted-secret\n")
            local[name] = str(path)
        else:
            local[name] = value
    config = auth_client_config(EnvReader(local, "GARMIN_SYNC_"), None, 30.0)
    assert config.token == "token-from-a-mounted-secret"
    assert config.tls_ca_file is not None


def test_every_secret_the_pods_mount_is_in_the_example_secrets() -> None:
    examples = {
        d["metadata"]["name"]: set(d["stringData"])
        for d in yaml.safe_load_all((DEPLOY / "secrets.example.yaml").read_text())
        if d
    }
    mounted: set[tuple[str, str]] = set()
    for _, pod in pod_templates(rendered("overlays/production")):
        for volume in pod["spec"]["volumes"]:
            sources = [s["secret"] for s in volume.get("projected", {}).get("sources", [])]
            if "secret" in volume:
                sources.append({**volume["secret"], "name": volume["secret"]["secretName"]})
            for source in sources:
                mounted |= {(source["name"], item["key"]) for item in source["items"]}
    # cert-manager writes the TLS Secret; every other one is the operator's to create.
    from_examples = {(name, key) for name, key in mounted if name != "garmin-auth-tls"}
    assert from_examples
    for name, key in from_examples:
        assert key in examples.get(name, set()), (name, key)


@pytest.mark.parametrize("kustomization", DEPLOYED)
def test_a_daily_cronjob_prunes_the_audit_trail_at_the_configured_retention(
    kustomization: str,
) -> None:
    """Without it the audit trail and the change log grow for ever (the README says to run
    prune-audit daily); it prunes at the retention the service is configured with."""
    from auth_service import cli as service_cli  # noqa: PLC0415
    from auth_service.config import load_audit_retention_days  # noqa: PLC0415

    docs = rendered(kustomization)
    cronjobs = [d for d in docs if d["kind"] == "CronJob"]
    pruning = [
        c
        for c in cronjobs
        for container in c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        if container.get("args", [])[:1] == ["prune-audit"]
    ]
    assert len(pruning) == 1, [c["metadata"]["name"] for c in cronjobs]
    [cronjob] = pruning
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    minute, hour, day, month, weekday = spec["schedule"].split()
    assert (day, month, weekday) == ("*", "*", "*")  # daily
    assert minute.isdigit()
    assert hour.isdigit()
    [container] = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    args = service_cli._parser().parse_args(container["args"])
    assert args.older_than is None  # the retention comes from the settings, as the service's
    [retention] = [e for e in container["env"] if e["name"] == "GARMIN_AUTH_AUDIT_RETENTION_DAYS"]
    reference = retention["valueFrom"]["configMapKeyRef"]
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert reference["name"] == config_map["metadata"]["name"]
    days = config_map["data"][reference["key"]]
    assert load_audit_retention_days({reference["key"]: days}) == 90
    database = {e["name"]: e.get("value") for e in container["env"]}
    assert database["GARMIN_AUTH_DATABASE_URL_FILE"].startswith(SECRET_MOUNT + "/")
