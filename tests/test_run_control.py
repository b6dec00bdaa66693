"""Ending a run from outside: ``timeout`` always ends it on time (status 124), SIGINT ends it at
once with status 130 and the exit table, a second SIGINT ends the process.

The shapes are the ones that used to hang: a guest spinning with no exit at all, and an arm64
guest whose virtual timer fires every ~100 us (an interrupt storm of short slices). Each is run
many times: a stop that lands before ``emu_start`` has begun was dropped by Unicorn, once in a
few runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from guestlib import ARM_ENTRY, ARM_GIC_TIMER_ON, SLOT_CUR_SPX_IRQ, arm64_image, x86_64

from hvsim.core.vm import STATUS_INTERRUPTED, STATUS_TIMEOUT

RUNS = 100
TIMEOUT = 0.01
# What a run may take beyond its timeout here. hvsim's bound is 0.1 s (benchmarks/run.py
# measures it: ~1-10 ms on an idle machine); this shared, noisy machine gets more, which still
# tells an honoured timeout from one ignored for seconds.
SLACK = 0.5

X86_SPIN = x86_64("mov dx, 0x3f8\nmov al, 0x52\nout dx, al\nspin: jmp spin")
# The virtual timer every 6,250 ticks (100 us at 62.5 MHz), through the GICv3: the handler
# acknowledges it, re-arms it and ends it.
ARM_TIMER_STORM = arm64_image(
    f"""movz x1, #0x4008, lsl #16
    msr vbar_el1, x1
    isb
{ARM_GIC_TIMER_ON}
    movz x20, #0x0900, lsl #16
    movz w1, #0x52
    strb w1, [x20]
    movz x1, #6250
    msr cntv_tval_el0, x1
    mov x1, #1
    msr cntv_ctl_el0, x1
    msr daifclr, #2
spin: add x2, x2, #1
    b spin""",
    vectors={SLOT_CUR_SPX_IRQ: "mrs x0, S3_0_C12_C12_0\nmovz x1, #6250\nmsr cntv_tval_el0, x1\n"
                               "add x3, x3, #1\nmsr S3_0_C12_C12_1, x0\neret"})  # ICC_IAR1_EL1 .. ICC_EOIR1_EL1
ARM_SPIN = arm64_image("movz x20, #0x0900, lsl #16\nmovz w1, #0x52\nstrb w1, [x20]\nspin: b spin")

SHAPES = {
    "intel_vtx-spin": ("intel_vtx", X86_SPIN),
    "amd_svm-spin": ("amd_svm", X86_SPIN),
    "arm_el2-spin": ("arm_el2", ARM_SPIN),
    "arm_el2-timer-storm": ("arm_el2", ARM_TIMER_STORM),
}


def vm_for(make_vm, shape: str, **kw):
    arch, image = SHAPES[shape]
    if arch == "arm_el2":
        kw["entry"] = ARM_ENTRY
    vm = make_vm(arch, **kw)
    vm.load(image)
    return vm


@pytest.mark.parametrize("shape", SHAPES)
def test_a_timeout_ends_every_run_on_time(make_vm, shape):
    late = []
    for _ in range(RUNS):
        vm = vm_for(make_vm, shape)
        start = time.monotonic()
        result = vm.run(timeout=TIMEOUT)
        took = time.monotonic() - start
        assert result.status == STATUS_TIMEOUT, result.reason
        if took > TIMEOUT + SLACK:
            late.append(round(took, 3))
    assert not late, f"{len(late)} of {RUNS} runs ended late: {late}"


def test_the_arm_timer_storm_really_takes_interrupts(make_vm):
    vm = vm_for(make_vm, "arm_el2-timer-storm")
    assert vm.run(timeout=0.2).status == STATUS_TIMEOUT
    assert vm.vcpus[0].xreg(3) > 10  # the handler ran: the guest lives on timer interrupts


def test_interrupt_from_another_thread_ends_the_run_with_status_130(make_vm):
    import threading

    vm = vm_for(make_vm, "intel_vtx-spin")
    threading.Timer(0.05, vm.interrupt).start()
    start = time.monotonic()
    result = vm.run(timeout=30)
    assert result.status == STATUS_INTERRUPTED and result.reason == "interrupted (SIGINT)"
    assert time.monotonic() - start < 5


# -- the command line ---------------------------------------------------------------------

def hvsim_process(tmp_path, shape: str, *args: str) -> subprocess.Popen:
    arch, image = SHAPES[shape]
    path = tmp_path / f"{shape}.img"
    path.write_bytes(image)
    extra = ["--entry", hex(ARM_ENTRY)] if arch == "arm_el2" else []
    return subprocess.Popen([sys.executable, "-m", "hvsim.core.cli", "run", str(path), "--arch", arch, *extra,
                             "--stats", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def started(proc: subprocess.Popen) -> None:
    """Wait for the guest's 'R' on the serial line: it is running."""
    assert proc.stdout.read(1) == b"R"


@pytest.mark.parametrize("shape", ["intel_vtx-spin", "amd_svm-spin", "arm_el2-timer-storm"])
def test_sigint_ends_the_run_with_status_130_and_the_exit_table(tmp_path, shape):
    for _ in range(3):
        proc = hvsim_process(tmp_path, shape)
        started(proc)
        time.sleep(0.05)  # inside a long slice
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
        text = err.decode()
        assert proc.returncode == STATUS_INTERRUPTED, text
        assert "VM exits" in text and "hvsim: interrupted (SIGINT)" in text and "Traceback" not in text
        assert took < 2, f"SIGINT took {took:.3f} s"  # the benchmark measures it; this catches 'ignored'


def test_a_second_sigint_ends_the_process(tmp_path):
    proc = hvsim_process(tmp_path, "intel_vtx-spin")
    started(proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # right after the first: the same Ctrl-C, the run ends as usual
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == STATUS_INTERRUPTED and "VM exits" in err.decode()


def test_a_second_sigint_later_ends_the_process_at_once(tmp_path, monkeypatch):
    """The first Ctrl-C is taken by a run that ignores it (on_interrupt does nothing here); a
    second one 0.3 s or more later ends the process with status 130 whatever the run does."""
    script = tmp_path / "stuck.py"
    script.write_text("import sys, time\n"
                      "from hvsim.core.engine import SigintWatch\n"
                      "with SigintWatch(lambda: None):\n"
                      "    print('R', flush=True)\n"
                      "    time.sleep(30)\n"
                      "sys.exit(3)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    assert proc.stdout.read(1) == b"R"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # the first one alone does not end it
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == STATUS_INTERRUPTED


def test_cli_timeout_prints_the_table_and_exits_124(tmp_path):
    proc = hvsim_process(tmp_path, "arm_el2-timer-storm", "--timeout", "0.3")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == STATUS_TIMEOUT
    assert "VM exits" in err.decode() and "hvsim: timeout" in err.decode()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_sigint_handling_is_restored_after_a_run(make_vm):
    before = signal.getsignal(signal.SIGINT)
    vm_for(make_vm, "intel_vtx-spin").run(timeout=TIMEOUT)
    assert signal.getsignal(signal.SIGINT) is before
