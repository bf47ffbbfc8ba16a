#!/usr/bin/env bash
# Run stomp_py_check.py with stomp.py pinned by requirements.txt, installed in
# a private virtualenv (default /tmp/fabricmq-interop-venv, env INTEROP_VENV).
# All arguments go to the check, e.g.:
#   tests/interop/run_stomp_py_check.sh --port 61613 --user admin --password admin
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${INTEROP_VENV:-/tmp/fabricmq-interop-venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" || {
        echo "run_stomp_py_check: python3 -m venv failed (apt-get install -y python3-venv)" >&2
        exit 2
    }
fi
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
    echo "$want" >"$stamp"
fi
exec "$venv/bin/python" "$here/stomp_py_check.py" "$@"
