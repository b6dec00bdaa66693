"""Console input: bytes sent to the console reach the platform's UART receive path (COM1 on
x86, the PL011 on arm64); `hvsim run` sends its standard input there.

The guests poll their UART's receive status, read each byte, and echo it in upper case until a
newline, then end the run: what they print is what they received.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from guestlib import ARM_ENTRY, ARM_SYSTEM_OFF, arm64_image, x86_64

ECHO_X86 = x86_64("""
    again:
        mov dx, 0x3fd
    poll:
        in al, dx
        test al, 1
        jz poll
        mov dx, 0x3f8
        in al, dx
        cmp al, 10
        je done
        sub al, 32
        out dx, al
        jmp again
    done:
        mov al, 0
        out 0xf4, al
        hlt""")

ECHO_ARM = arm64_image(f"""
        movz x1, #0x0900, lsl #16
    poll:
        ldr w2, [x1, #0x18]
        tbnz w2, #4, poll
        ldr w2, [x1]
        and w2, w2, #0xff
        cmp w2, #10
        b.eq done
        sub w2, w2, #32
        str w2, [x1]
        b poll
    done:
        {ARM_SYSTEM_OFF}""")

IMAGES = {"intel_vtx": (ECHO_X86, 1), "amd_svm": (ECHO_X86, 1), "arm_el2": (ECHO_ARM, 0)}


@pytest.mark.parametrize("arch", list(IMAGES))
def test_input_sent_from_another_thread_reaches_the_uart(make_vm, arch):
    image, status = IMAGES[arch]
    vm = make_vm(arch, **({"entry": ARM_ENTRY} if arch == "arm_el2" else {}))
    vm.load(image)
    threading.Timer(0.05, vm.console.send, (b"hello",)).start()
    threading.Timer(0.10, vm.console.send, (b" world\n",)).start()
    result = vm.run(timeout=20)
    assert result.status == status, result.reason
    assert vm.console.text == "HELLO\0WORLD"  # the space (0x20) minus 32 is NUL


@pytest.mark.parametrize("arch", list(IMAGES))
def test_hvsim_run_sends_stdin_to_the_guest(tmp_path, arch):
    image, status = IMAGES[arch]
    path = tmp_path / "echo.bin"
    path.write_bytes(image)
    extra = ["--entry", hex(ARM_ENTRY)] if arch == "arm_el2" else []
    proc = subprocess.run([sys.executable, "-m", "hvsim.core.cli", "run", str(path), "--arch", arch, "--timeout", "30", *extra],
                          input=b"abc\nignored", capture_output=True, timeout=60)
    assert proc.returncode == status, proc.stderr
    assert proc.stdout == b"ABC"


def test_no_stdin_leaves_the_uart_empty(tmp_path):
    path = tmp_path / "echo.bin"
    path.write_bytes(ECHO_X86)
    proc = subprocess.run([sys.executable, "-m", "hvsim.core.cli", "run", str(path), "--arch", "intel_vtx", "--timeout", "1",
                           "--no-stdin"], input=b"abc\n", capture_output=True, timeout=60)
    assert proc.returncode == 124 and proc.stdout == b""
