"""``retrain demo`` tells its story (issue 20): the sabotage is labelled, the emergency shows its
bypass and priority on its own line, a coalesced decision gives its reason only, the closing
hints are commands that work as printed, and the folder it leaves is found by a plain
``retrain status`` next to it, which then reads the demo's own simulated clock.

The console script as a newcomer runs it, on 4.25 simulated days (the flash crash is at +100 h).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RETRAIN = Path(sys.executable).with_name("retrain")


def test_the_demo_tells_its_story_and_leaves_a_home_the_cli_finds(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    done = subprocess.run([str(RETRAIN), "demo", "--days", "4.25"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    lines = out.splitlines()

    # The first canary is sabotaged on purpose, said before its automatic rollback
    sabotage = next(i for i, ln in enumerate(lines) if "SABOTAGE" in ln)
    assert "on purpose" in lines[sabotage]
    rollback = next(i for i, ln in enumerate(lines) if "rolled back automatically" in ln)
    assert sabotage < rollback

    # The emergency on its own line, with what it bypassed and its priority
    emergency = [ln for ln in lines if "EMERGENCY:" in ln]
    assert len(emergency) == 1 and "bypassed:" in emergency[0] and "priority 9" in emergency[0]

    # A coalesced decision by its reason only, not every rule that failed
    coalesced = [ln for ln in lines if "coalesced:" in ln]
    assert all("joins the run already in progress" in ln and "cooldown" not in ln for ln in coalesced)

    # A performance request names the span of each accuracy it gives
    for ln in (ln for ln in lines if "performance trigger fired" in ln and "below the floor" in ln):
        assert "over the last" in ln and "over the window's" in ln

    # The closing hints run as printed, from the folder the demo ran in
    hints = [ln.split("  #")[0].strip() for ln in lines[lines.index("What to try next (copy as they are):") + 1:]
             if ln.startswith("  RETRAIN_HOME=")]
    assert len(hints) >= 5
    for hint in hints:
        assign, *argv = shlex.split(hint)
        name, value = assign.split("=", 1)
        ran = subprocess.run(argv, env={**env, name: value}, cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert ran.returncode == 0, (hint, ran.stderr)
    # and status and costs there read the demo's clock (January 2026), and say so
    home = tmp_path / "retrain-demo"
    clock = json.loads((home / "demo-clock.json").read_text())["now"]
    assert clock.startswith("2026-01-09T06:00")
    costs = subprocess.run([str(RETRAIN), "costs"], env={**env, "RETRAIN_HOME": str(home)}, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert "simulated clock, 2026-01-09 06:00 UTC" in costs.stdout and "2026-01-06" in costs.stdout

    # A plain status in the same folder points at the demo's home
    plain = subprocess.run([str(RETRAIN), "status"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode == 1 and "RETRAIN_HOME=retrain-demo" in plain.stderr
    assert re.search(r"db upgrade", plain.stderr) is None
