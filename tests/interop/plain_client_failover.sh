#!/usr/bin/env bash
# Run plain_client_failover.py with stomp.py pinned by requirements.txt, in the same private
# virtualenv as run_stomp_py_check.sh (default /tmp/fabricmq-interop-venv, env INTEROP_VENV).
# Driven by tests/tests/client_failover.rs; all arguments go to the script, e.g.:
#   tests/interop/plain_client_failover.sh --port 61613 --user admin --password admin
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${INTEROP_VENV:-/tmp/fabricmq-interop-venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" || {
        echo "plain_client_failover: python3 -m venv failed (apt-get install -y python3-venv)" >&2
        exit 2
    }
fi
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
    echo "$want" >"$stamp"
fi
exec "$venv/bin/python" -u "$here/plain_client_failover.py" "$@"
