"""What Intel APIC virtualization (SDM Vol. 3C ch. 30) and AMD AVIC (APM Vol. 2 15.29) share:
a 4 KiB page laid out as the local APIC's registers (the VMX virtual-APIC page, the AVIC
backing page), and a guest-physical page whose accesses the processor serves itself instead of
treating them as memory (the VMX APIC-access page, the AVIC APIC BAR).

Register layout (SDM Table 11-1 / APM Table 16-2): TPR 080H, PPR 0A0H, EOI 0B0H, ISR 100H-170H,
TMR 180H-1F0H, IRR 200H-270H, ICR 300H / 310H; the 256-bit registers use the low 32 bits of eight
16-byte units, bit x at offset base + ((x & E0H) >> 1), bit position x & 1FH (SDM 30.1.1).

How the page is served: the stage-2 translation (EPT / NPT) of that page is answered with a
private page of the engine's physical space, mapped with ``mmio_map`` in the vCPU's engine, so
every guest load and store to it reaches a callback while the guest keeps running in the engine
(no exit for an access the processor virtualizes). A fetch from it is refused (the stage-2
fault carries ``apic_access``). Paging-structure reads through it stay plain memory.
"""

from __future__ import annotations

import struct

from hvsim.core.mmu import HOST_PHYS_BASE, PERM_R, PERM_W, Stage2Fault

TPR, PPR, EOI, LDR, DFR, SVR, ISR, TMR, IRR, ESR, ICR_LO, ICR_HI = (
    0x080, 0x0A0, 0x0B0, 0x0D0, 0x0E0, 0x0F0, 0x100, 0x180, 0x200, 0x280, 0x300, 0x310)
ID, VERSION, APR, TIMER_ICR, TIMER_CCR, TIMER_DCR, SELF_IPI = 0x020, 0x030, 0x090, 0x380, 0x390, 0x3E0, 0x3F0
# The private engine page (below the run loop's sentinel page at HOST_PHYS_BASE - 0x1000).
ENGINE_PAGE = HOST_PHYS_BASE - 0x2000
_U32 = struct.Struct("<I")


class ApicPage:
    """A window on one APIC-register page in host memory."""

    __slots__ = ("host", "base")

    def __init__(self, host, base: int) -> None:
        self.host, self.base = host, base

    def r32(self, offset: int) -> int:
        return _U32.unpack_from(self.host.view, self.base + offset)[0]

    def w32(self, offset: int, value: int) -> None:
        _U32.pack_into(self.host.view, self.base + offset, value & 0xFFFF_FFFF)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.host.read(self.base + offset, size), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.host.write(self.base + offset, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))

    def bit(self, reg: int, vector: int) -> bool:
        return bool(self.r32(reg + ((vector & 0xE0) >> 1)) >> (vector & 0x1F) & 1)

    def set_bit(self, reg: int, vector: int, on: bool = True) -> None:
        at = reg + ((vector & 0xE0) >> 1)
        value = self.r32(at)
        self.w32(at, value | 1 << (vector & 0x1F) if on else value & ~(1 << (vector & 0x1F)))

    def highest(self, reg: int) -> int:
        """The index of the highest bit set in the 256-bit register at ``reg``, or 0 if none."""
        for unit in range(7, -1, -1):
            value = self.r32(reg + 0x10 * unit)
            if value:
                return unit * 32 + value.bit_length() - 1
        return 0

    def bits(self, reg: int) -> list[int]:
        return [v for v in range(256) if self.bit(reg, v)]


class AccessWindow:
    """A stage-2 translation (EPT or NPT) in which one page is served by the processor's APIC
    virtualization: ``match(gpa, hpa)`` says whether an access is to that page. Everything else
    is the wrapped translation's."""

    def __init__(self, inner, match, fetch_fault) -> None:
        self.inner, self.match, self.fetch_fault = inner, match, fetch_fault
        self.gpa_page = 0  # the guest-physical page last found to be the APIC page

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def translate(self, gpa: int, write: bool = False, fetch: bool = False, walk: bool = False):
        hpa, perms = self.inner.translate(gpa, write, fetch, walk)
        if walk or not self.match(gpa, hpa):
            return hpa, perms
        if fetch:
            fault = Stage2Fault(gpa, f"instruction fetch from the APIC page at guest-physical {gpa:#x}",
                                fetch=True, allowed=perms)
            fault.apic_access = gpa & 0xFFF
            self.fetch_fault(fault)
            raise fault
        self.gpa_page = gpa & ~0xFFF
        # The MMU adds HOST_PHYS_BASE: the engine gets ENGINE_PAGE, whose callbacks serve it.
        return ENGINE_PAGE - HOST_PHYS_BASE + (gpa & 0xFFF), perms & (PERM_R | PERM_W)


def map_engine_page(vcpu, read, write) -> None:
    """Map ENGINE_PAGE in the vCPU's engine once, with ``read(offset, size)`` and
    ``write(offset, size, value)`` (exceptions stop the engine and are raised by the run loop)."""
    if getattr(vcpu, "_apic_engine_page", False):
        return
    fail = vcpu._raw.fail

    def on_read(_uch, offset, size, _ud):
        try:
            return read(offset, size)
        except BaseException as exc:
            fail(exc)
            return 0

    def on_write(_uch, offset, size, value, _ud):
        try:
            write(offset, size, value)
        except BaseException as exc:
            fail(exc)

    vcpu._raw.mmio_map(ENGINE_PAGE, 0x1000, on_read, on_write)
    vcpu._apic_engine_page = True


# The VMM's side: a 4 KiB stage-2 mapping for the APIC page, as KVM maps its APIC-access page
# (EPT) or AVIC's APIC BAR (NPT). Tables come from the top of the VM's stage-2 area, downwards.
def map_stage2_page(vm, root: int, gpa: int, hpa: int, table_bits: int, leaf_bits: int) -> None:
    """Map guest-physical ``gpa`` to host-physical ``hpa`` (4 KiB) in the 4-level stage-2 tables
    at ``root`` (EPT and NPT share the shape), splitting nothing: a 2 MiB leaf on the way is an
    error (hvsim maps RAM with 2 MiB pages; the APIC page lies outside RAM)."""
    from hvsim.plugins.x86.arch import STAGE2_AREA

    host = vm.host
    top = vm.arch.hv_area + STAGE2_AREA + (2 << 20)
    table = root
    for shift in (39, 30, 21):
        at = table + ((gpa >> shift) & 0x1FF) * 8
        entry = int.from_bytes(host.read(at, 8), "little")
        if entry & 0x7 and entry & (1 << 7):
            raise ValueError(f"guest-physical {gpa:#x} lies in a large stage-2 page")
        if not entry & 0x7:
            used = getattr(vm.arch, "_apic_tables", 0) + 1
            vm.arch._apic_tables = used
            new = top - used * 0x1000
            host.write(new, bytes(0x1000))
            entry = new | table_bits
            host.write(at, entry.to_bytes(8, "little"))
        table = entry & 0x000F_FFFF_FFFF_F000
    host.write(table + ((gpa >> 12) & 0x1FF) * 8, ((hpa & ~0xFFF) | leaf_bits).to_bytes(8, "little"))
