# Sourced by scripts/test and scripts/demo: makes sure .venv exists and holds this checkout
# installed editable with its dev dependencies. Expects ROOT; sets VENV, PY and PATH.
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
INSTALL_STAMP="$VENV/.installed-from-pyproject"
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

ensure_venv() {
    if [ ! -x "$PY" ]; then
        echo "creating .venv"
        python3 -m venv "$VENV"
    fi
    # Reinstall only when pyproject.toml (the pins) or the interpreter changed since last time.
    local want_stamp pip_log
    want_stamp="$( (sha256sum "$ROOT/pyproject.toml"; "$PY" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$INSTALL_STAMP" 2>/dev/null || true)" != "$want_stamp" ]; then
        echo "pip install -e '.[dev]'"
        # Quiet: the build backend's warnings are shown only when the install fails.
        pip_log="$(mktemp)"
        if ! (cd "$ROOT" && "$PY" -m pip install --quiet -e '.[dev]') >"$pip_log" 2>&1; then
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
