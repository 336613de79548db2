"""``embmon replay`` and ``embmon run`` do not import what only ``embmon reference fetch`` needs.

agent/reference_fetch.py brings tarfile, urllib.request, http.client and hashlib; start-up is
part of every replay's time (bench/replay_vs_whylogs.py times the whole process). Nor does a
replay load the Prometheus client (it serves no metrics) or PyYAML (only a config file needs
it): 50-75 ms of start-up between them on this machine.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_cli_and_replay_load_no_reference_fetch_code() -> None:
    child = "import json, sys, agent.cli, agent.replay; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    modules = set(json.loads(out.stdout))
    assert {"agent.cli", "agent.replay"} <= modules
    assert "agent.reference_fetch" not in modules
    assert "prometheus_client" not in modules
    assert "yaml" not in modules
