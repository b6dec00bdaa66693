"""The CPUID values an hvsim x86 guest sees (SDM Vol. 2A "CPUID", APM Vol. 3 Appendix E).

A conservative processor: long mode, PAE, NX, SSE2, an APIC, SMEP, SMAP and 5-level paging
(the stage-1 walker has them), the hypervisor-present bit and a hypervisor leaf at 0x4000_0000,
like a KVM guest's. The vendor string and the family come from
the vendor plugin; nested virtualization (VMX / SVM) is not offered to the guest.
"""

from __future__ import annotations

import struct

HYPERVISOR_SIGNATURE = b"hvsimhvsimhv"  # CPUID 0x4000_0000 EBX:ECX:EDX, as KVM's "KVMKVMKVM\0\0\0"

# CPUID.01H:EDX
FPU, TSC, MSR, PAE, CX8, APIC, SEP, PGE, CMOV, PAT, PSE, CLFSH, MMX, FXSR, SSE, SSE2 = (
    1 << 0, 1 << 4, 1 << 5, 1 << 6, 1 << 8, 1 << 9, 1 << 11, 1 << 13, 1 << 15, 1 << 16, 1 << 3,
    1 << 19, 1 << 23, 1 << 24, 1 << 25, 1 << 26)
# CPUID.01H:ECX
SSE3, CX16, XSAVE, OSXSAVE, RDRAND, HYPERVISOR = 1 << 0, 1 << 13, 1 << 26, 1 << 27, 1 << 30, 1 << 31
X2APIC, TSC_DEADLINE = 1 << 21, 1 << 24  # the emulated local APIC (plugins/devices/lapic.py)
# CPUID.(EAX=07H,ECX=0):EBX, ECX
SMEP, RDSEED, SMAP = 1 << 7, 1 << 18, 1 << 20
LA57 = 1 << 16  # ECX: 5-level paging (CR4.LA57), 57-bit linear addresses
# CPUID.(EAX=0DH,ECX=0): the XCR0 bits XSETBV accepts (x87, SSE) and the XSAVE area's size
XCR0_SUPPORTED, XSAVE_AREA_SIZE = 0x3, 512 + 64
# CPUID.80000001H:EDX
SYSCALL, NX, LM = 1 << 11, 1 << 20, 1 << 29

LEAF1_EDX = FPU | PSE | TSC | MSR | PAE | CX8 | APIC | SEP | PGE | CMOV | PAT | CLFSH | MMX | FXSR | SSE | SSE2
# XSAVE: the engine runs XSAVE/XRSTOR/XGETBV/XSETBV (a VMM intercepts XSETBV); RDRAND and
# RDSEED run in the engine too. Not offered: MONITOR/MWAIT, PCID/INVPCID, XSAVES, RDPRU, a
# PMU (leaf 0AH is 0): the engine has none of them, so the guest gets #UD (RDPMC: #GP) unless
# the VMM intercepts them.
LEAF1_ECX = SSE3 | CX16 | X2APIC | TSC_DEADLINE | XSAVE | RDRAND | HYPERVISOR


def _regs(text: bytes) -> tuple[int, ...]:
    return struct.unpack("<" + "I" * (len(text) // 4), text)


def cpuid(leaf: int, subleaf: int, vendor: bytes, signature: int, brand: str, vcpu_index: int,
          vcpus: int) -> tuple[int, int, int, int]:
    """(EAX, EBX, ECX, EDX) for ``leaf``/``subleaf``; out-of-range leaves read as zeros."""
    v = _regs(vendor)  # EBX, EDX, ECX order: "Genu" "ineI" "ntel"
    if leaf == 0:  # Intel: up to the TSC leaf (15H); AMD defines none past 0DH that hvsim fills
        return (0x15 if vendor == b"GenuineIntel" else 0x0D), v[0], v[2], v[1]
    if leaf == 1:
        ebx = (vcpu_index << 24) | (vcpus << 16) | (8 << 8)  # initial APIC id, logical count, CLFLUSH 64 B
        return signature, ebx, LEAF1_ECX, LEAF1_EDX
    if leaf == 7 and subleaf == 0:
        return 0, SMEP | RDSEED | SMAP, LA57, 0
    if leaf == 0xD and subleaf == 0:
        return XCR0_SUPPORTED, XSAVE_AREA_SIZE, XSAVE_AREA_SIZE, 0
    if leaf == 0x4000_0000:
        s = _regs(HYPERVISOR_SIGNATURE)
        return 0x4000_0000, s[0], s[1], s[2]
    if leaf == 0x8000_0000:
        return 0x8000_0008, v[0], v[2], v[1]
    if leaf == 0x8000_0001:
        return 0, 0, 0, SYSCALL | NX | LM
    if 0x8000_0002 <= leaf <= 0x8000_0004:
        text = brand.encode()[:48].ljust(48, b"\0")
        i = (leaf - 0x8000_0002) * 16
        return _regs(text[i:i + 16])
    if leaf == 0x8000_0008:
        return 0x3928, 0, 0, 0  # 40-bit physical, 57-bit linear addresses (LA57)
    return 0, 0, 0, 0


# CPUID.15H's core crystal clock: the local APIC timer's (plugins/devices/lapic.py counts one bus
# tick per ns), as the SDM has the APIC timer run at the crystal clock when leaf 15H enumerates it.
CRYSTAL_HZ = 1_000_000_000
TSC_RATIO_DENOMINATOR = 1000


def tsc_leaf(tsc_hz: float) -> tuple[int, int, int, int]:
    """CPUID.15H (SDM Vol. 2A, CPUID "Time Stamp Counter and Nominal Core Crystal Clock
    Information Leaf"): EAX the denominator and EBX the numerator of the TSC / crystal clock
    ratio, ECX the crystal's frequency in Hz; TSC Hz = ECX * EBX / EAX. Linux computes
    ``crystal kHz * EBX / EAX`` in 32 bits (``native_calibrate_tsc``), so the ratio is given in
    thousandths (the TSC to the MHz) and not at all (EBX = 0, SDM: "not enumerated") for a TSC
    at 4.29 GHz or more. Enumerated, Linux takes the TSC's rate as known and skips its PIT /
    PM-timer calibration; the APIC timer's rate is ECX."""
    numerator = max(1, round(tsc_hz * TSC_RATIO_DENOMINATOR / CRYSTAL_HZ))
    if CRYSTAL_HZ // 1000 * numerator >= 1 << 32:
        return 0, 0, 0, 0
    return TSC_RATIO_DENOMINATOR, numerator, CRYSTAL_HZ, 0
