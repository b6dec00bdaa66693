"""The example VMMs in examples/ run to the end and get the answers they print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script,expect", [
    ("vtx_vmm.py", "timer interrupts injected: 3"),
    ("svm_vmm.py", "VMMCALL 0x77 answered with 0xee"),
    ("el2_hypervisor.py", "vendor HVC answered 0xe12"),
])
def test_example_vmm_runs_to_the_end(script, expect):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expect in proc.stdout
