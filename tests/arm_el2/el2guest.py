"""Small arm64 guests for the arm_el2 tests, assembled with keystone.

A guest is a raw image loaded at RAM + 0x80000 (``LOAD``, where raw images go) and entered
there. :func:`guest` puts a prologue before the test's code (VBAR_EL1 = the image's vector
table, X9 = the log at ``LOG``) and after it a vector table whose 16 entries all go to one
handler. The handler appends a record (vector offset, ESR_EL1, ELR_EL1, FAR_EL1, SPSR_EL1) to
the log, then returns with ERET, to X20 instead of ELR_EL1 when X20 is set (for exceptions whose
ELR is the faulting instruction). ``svc #0xffff`` from anywhere ends the run (PSCI SYSTEM_OFF).
Keystone has no ``.inst`` (use ``.word``), no ``udf`` and no numeric local labels.
"""

from __future__ import annotations

import struct

from guestlib import ARM_MMU_ON, ARM_SYSTEM_OFF
from keystone import KS_ARCH_ARM64, KS_MODE_LITTLE_ENDIAN, Ks

RAM = 0x4000_0000
LOAD = RAM + 0x8_0000
LOG = 0x4120_0000  # RAM + 18 MiB: clear of the device tree, which is at RAM + 16 MiB with 32 MiB of RAM
SCRATCH = 0x4180_0000
PL011 = 0x0900_0000
RECORD = 5  # quadwords per logged exception

_ks = Ks(KS_ARCH_ARM64, KS_MODE_LITTLE_ENDIAN)

# PSCI function ids (DEN0022) loaded into W0.
SYSTEM_OFF = ARM_SYSTEM_OFF


# Stage-1 tables (L1 at SCRATCH): guestlib.ARM_MMU_ON says what they map.
MMU_ON = ARM_MMU_ON


def asm(src: str, base: int = LOAD) -> bytes:
    return bytes(_ks.asm(src, base)[0])


def w0(fid: int) -> str:
    """Instructions that load a 32-bit function id into W0."""
    return f"movz w0, #{fid & 0xFFFF:#x}\nmovk w0, #{fid >> 16:#x}, lsl #16"


_PROLOGUE = """
    adr x21, vectors
    msr vbar_el1, x21
    isb
    movz x9, #0x4120, lsl #16
    mov x20, #0
"""

_HANDLER = f"""
log_exception:
    mrs x11, esr_el1
    mrs x12, elr_el1
    mrs x13, far_el1
    mrs x14, spsr_el1
    stp x10, x11, [x9], #16
    stp x12, x13, [x9], #16
    str x14, [x9], #8
    movz x15, #0xffff
    movk x15, #0x5600, lsl #16
    cmp x11, x15
    b.eq power_off
    cbz x20, handler_return
    msr elr_el1, x20
    mov x20, #0
handler_return:
    eret
power_off:
    {SYSTEM_OFF}
"""


def _vectors() -> str:
    lines = [".balign 0x800", "vectors:"]
    for slot in range(16):
        lines += [".balign 0x80", f"mov x10, #{slot * 0x80:#x}", "b log_exception"]
    return "\n".join(lines)


def guest(main: str) -> bytes:
    """Prologue + ``main`` + the logging handler + the vector table, at LOAD."""
    return asm("\n".join([_PROLOGUE, main, _HANDLER, _vectors()]))


def log_records(vm, count: int) -> list[tuple[int, int, int, int, int]]:
    data = vm.memory.read(LOG, 8 * RECORD * count)
    return [struct.unpack_from("<5Q", data, 8 * RECORD * i) for i in range(count)]


def u64(vm, address: int) -> int:
    return vm.memory.read_u64(address)
