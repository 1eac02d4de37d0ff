"""The production overlay's settings, as the pod sees them (the ConfigMap, the Secrets mounted as
files, the TLS Secret), pass the service's own `check-config` after `migrate`: the manifests and
the program agree on every variable name and file."""

from __future__ import annotations

import base64
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.deploy.test_manifests import config, rendered

MOUNTS = "/var/run/secrets/"


def certificate_files() -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "garmin-auth")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("garmin-auth")]), False)
        .sign(key, hashes.SHA256())
    )
    return {
        "tls.crt": certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "tls.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    }


def test_the_production_settings_pass_check_config(tmp_path: Path) -> None:
    # What the Secrets hold, each ending with a newline as `kubectl create secret` writes it.
    contents = {
        **certificate_files(),
        "encryption-keys": "k1:" + base64.b64encode(os.urandom(32)).decode() + "\n",
        "database-url": f"sqlite:///{tmp_path / 'auth.sqlite3'}\n",
        "callers.toml": '[[callers]]\nname = "sync-worker"\n'
        f'token_sha256 = "{"ab" * 32}"\nroles = ["worker"]\n',
        "oauth-consumer-key": "consumer-key\n",
        "oauth-consumer-secret": "consumer-secret\n",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARMIN_AUTH_")}
    for name, value in config(rendered("overlays/production")).items():
        env[name] = value
        if value.startswith(MOUNTS):
            path = tmp_path / value.rpartition("/")[2]
            path.write_text(contents[path.name], encoding="utf-8")
            env[name] = str(path)
    # The metrics and health ports of the ConfigMap may be taken on this machine: check-config
    # only parses them.
    migrate = subprocess.run(
        ["garmin-auth-service", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert migrate.returncode == 0, migrate.stderr

    result = subprocess.run(
        ["garmin-auth-service", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "environment production" in result.stdout
    assert "tls: TLS" in result.stdout
