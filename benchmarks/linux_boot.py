"""Booting Debian's cloud kernel with a busybox initramfs: time to the first userspace line and
to power-off under hvsim, beside QEMU TCG on the same kernel and initramfs in the same run
(when qemu-system-aarch64 / qemu-system-x86_64 are installed). Target: within 3x of QEMU TCG's
time to userspace, with stage 2 on (hvsim's default).

    python benchmarks/run.py --only linux_boot
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MARK = b"HVSIM-USERSPACE"
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo HVSIM-USERSPACE
cat /proc/interrupts
poweroff -f
"""
QEMU = {
    "arm_el2": ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-accel", "tcg"],
    "intel_vtx": ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg"],
}
CONSOLE = {"arm_el2": "ttyAMA0", "intel_vtx": "ttyS0", "amd_svm": "ttyS0"}


def timed(cmd: list[str], limit: float) -> tuple[float | None, float | None, int | None]:
    """(seconds to the userspace mark, seconds to the process's end, its status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    mark: list[float] = []
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    tail = b""
    try:
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            tail = (tail + chunk)[-4096:]
            if not mark and MARK in tail:
                mark.append(time.perf_counter() - start)
        status = proc.wait()
    finally:
        timer.cancel()
    return (mark[0] if mark else None), time.perf_counter() - start, status


def linux_boot(out) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import linuxguest

    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("arm_el2", "intel_vtx", "amd_svm"):
            try:
                kernel = linuxguest.kernel(arch)
                initrd = Path(tmp) / f"initrd-{arch}.gz"
                initrd.write_bytes(linuxguest.initramfs(arch, INIT))
            except linuxguest.Unavailable as exc:
                out.add_row("Linux boot", arch, "", f"skipped: {exc}", "", "", "")
                continue
            append = f"console={CONSOLE[arch]} quiet"
            hv = timed([sys.executable, "-m", "hvsim.core.cli", "run", str(kernel), "--arch", arch, "--mem", "256M",
                        "--initrd", str(initrd), "--append", append, "--no-stdin", "--timeout", "600"], 660)
            qemu = QEMU.get("intel_vtx" if arch == "amd_svm" else arch)
            q = (None, None, None)
            if qemu and shutil.which(qemu[0]):
                q = timed(qemu + ["-m", "256M", "-nographic", "-no-reboot", "-kernel", str(kernel), "-initrd",
                                  str(initrd), "-append", append], 600)
            ratio = f"{hv[0] / q[0]:.1f}x QEMU" if hv[0] and q[0] else ""
            ok = bool(hv[0] and q[0] and hv[0] <= 3 * q[0])
            out.add_row("Linux boot: to userspace / to power-off", arch,
                        f"QEMU TCG {q[0]:.1f} s / {q[1]:.1f} s" if q[0] else "QEMU not installed or failed",
                        f"{hv[0]:.1f} s / {hv[1]:.1f} s (status {hv[2]})" if hv[0] else f"no userspace (status {hv[2]})",
                        ratio, "<= 3x QEMU TCG", "PASS" if ok else "FAIL" if q[0] else "")
