"""The installed layout: everything under ``hvsim``, nothing called ``core`` or ``plugins`` at the
top of site-packages, and the bundled guests inside the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_maps_the_top_level_folders_into_one_namespace(tmp_path):
    # Built from a copy: a build rewrites hvsim.egg-info in the tree it builds, which other runs
    # in the working tree would read while it is half written.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                             ".hypothesis", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "-w", str(tmp_path), str(src)], check=True)
    (wheel,) = tmp_path.glob("hvsim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"hvsim", "hvsim-0.1.0.dist-info"}
    for needed in ("hvsim/__init__.py", "hvsim/core/hookspecs.py", "hvsim/plugins/intel_vtx/__init__.py",
                   "hvsim/plugins/amd_svm/__init__.py", "hvsim/plugins/arm_el2/__init__.py",
                   "hvsim/plugins/devices/__init__.py", "hvsim/plugins/x86/idt.py",
                   "hvsim/core/guests/demo_x86.elf", "hvsim/core/guests/demo_arm64.img"):
        assert needed in names
    entry_points = zipfile.ZipFile(wheel).read("hvsim-0.1.0.dist-info/entry_points.txt").decode()
    assert "[hvsim.plugins]" in entry_points and "intel_vtx = hvsim.plugins.intel_vtx:plugin" in entry_points
