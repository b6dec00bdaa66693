"""Shadow paging: memory virtualization without EPT / NPT, the way VMMs did it before them.

With ``VM(..., paging="shadow")`` (``hvsim run --paging shadow``) the VMM turns stage 2 off and
keeps, per vCPU, shadow page tables that map guest-virtual addresses straight to host-physical
ones; the processor walks those instead of the guest's own tables. They are a software TLB (the
user's document calls it the vTLB): filled lazily, emptied when the guest would flush its TLB.

- The VMM intercepts #PF (exception bitmap bit 14 / SVM exception intercept 14), MOV to CR3
  (CR3-load exiting / CR3 write intercept), INVLPG and paging-mode changes in CR0/CR4.
- A #PF exit: the VMM walks the guest's tables for the faulting address (setting their accessed
  and dirty bits as the processor would). If the guest's own translation faults, the #PF is
  reflected into the guest with the guest's error code and CR2; otherwise the VMM writes one
  shadow entry (4 KiB, write permission only once the guest's dirty bit is set) and resumes the
  guest at the faulting instruction.
- MOV to CR3 drops the shadow tables (the guest asked for a TLB flush), INVLPG drops one entry.
  The guest's page-table pages need no write protection in this scheme: like a TLB, the shadow
  may be stale until the guest flushes, which the architecture already requires of it.
- MMIO: a guest page that maps a device gets a shadow entry with ignored bit 62 set (KVM marks
  its MMIO shadow entries too); the processor model sends such accesses to the device range.

The shadow tables are real x86 4-level tables in the hypervisor's area of host memory,
whatever the guest's own paging mode (a 32-bit guest's addresses are a subset), and
``hvsim translate`` shows them as stage 1 when shadow paging is on.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as X

from hvsim.core.memory import Access

from . import paging

SHADOW_MMIO = 1 << 62  # ignored by the processor (SDM Table 4-19); hvsim's "device page" mark
_U64 = struct.Struct("<Q")
_ADDR = ((1 << paging.MAXPHYADDR) - 1) & ~0xFFF
_TABLE = paging.P | paging.RW | paging.US
# The processor's paging mode for the shadow tables: 4-level, write protection on, NX on.
HW_CR0, HW_CR4, HW_EFER = paging.CR0_PG | paging.CR0_WP | 1, paging.CR4_PAE, paging.EFER_LMA | paging.EFER_NXE


class ShadowMmu:
    """One vCPU's shadow page tables, in ``pages`` pages of host memory at ``pool``."""

    def __init__(self, vcpu, pool: int, pages: int) -> None:
        self.vcpu = vcpu
        self.host = vcpu.vm.host
        self.pool, self.pages = pool, pages
        self.faults = self.fills = self.flushes = 0
        self.reset()

    # -- the tables ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every shadow translation: a fresh, empty root."""
        self.flushes += 1
        self._next = 0
        self.root = self._alloc()

    def _alloc(self) -> int | None:
        if self._next >= self.pages:
            return None
        page = self.pool + self._next * 0x1000
        self._next += 1
        self.host.write(page, bytes(0x1000))
        return page

    def _leaf_address(self, gva: int, create: bool) -> int | None:
        """Where the shadow PTE for ``gva`` is (building the tables to it when ``create``). Out of
        shadow memory, everything is dropped and the walk starts again, as a vTLB may."""
        while True:
            table = self.root
            for level in (4, 3, 2):
                at = table + ((gva >> (12 + 9 * (level - 1))) & 0x1FF) * 8
                entry = _U64.unpack_from(self.host.view, at)[0]
                if not entry & paging.P:
                    if not create:
                        return None
                    new = self._alloc()
                    if new is None:
                        break
                    entry = new | _TABLE
                    _U64.pack_into(self.host.view, at, entry)
                table = entry & _ADDR
            else:
                return table + ((gva >> 12) & 0x1FF) * 8
            self.reset()

    # -- what the processor sees ----------------------------------------------------------------------
    def walk(self, gva: int, access: Access, cpl: int):
        """The processor's walk of the shadow tables (host-physical), for the MMU's fill."""
        view, size = self.host.view, self.host.size

        def read(hpa: int) -> int:
            return _U64.unpack_from(view, hpa)[0] if hpa + 8 <= size else 0

        return paging.walk(gva, access, HW_CR0, self.root, HW_CR4, HW_EFER, cpl,
                           lambda a: read(a) & 0xFFFF_FFFF, read, record=False)

    # -- the VMM's exit handling ---------------------------------------------------------------------
    def page_fault(self, gva: int, error_code: int) -> None:
        """A #PF exit: sync one shadow entry from the guest's tables, or reflect the fault."""
        vcpu = self.vcpu
        self.faults += 1
        access = (Access.WRITE if error_code & paging.PFEC_W else Access.READ) | \
            (Access.EXECUTE if error_code & paging.PFEC_I else 0)
        memory = vcpu.vm.memory
        cr0, cr4, efer = vcpu.cr0(), vcpu.regs.read(X.UC_X86_REG_CR4), vcpu.efer()
        w = paging.walk(gva, access, cr0, vcpu.regs.read(X.UC_X86_REG_CR3), cr4, efer, vcpu.cpl(),
                        memory.read_u32, memory.read_u64, self._guest_update)
        if w.fault:  # the guest's own #PF: CR2 and its error code, through its IDT
            vcpu.regs.write(X.UC_X86_REG_CR2, gva)
            vcpu.deliver_event(14, w.error_code, vcpu.rip())
            return
        gpa = w.address
        write = bool(access & Access.WRITE)
        if memory.is_ram(gpa):
            frame = memory.translate(gpa & ~0xFFF)
        elif vcpu.vm.bus.mmio(gpa) is not None or vcpu.vm.mmio_fallback:
            frame = SHADOW_MMIO | (gpa & ~0xFFF)
        else:
            vcpu.vm.crash(f"access to guest-physical {gpa:#x}, which no RAM or device backs (shadow paging)")
            return
        spte = frame | paging.P | paging.A
        if w.writable and (w.dirty or write):
            spte |= paging.RW | paging.D
        if w.user:
            spte |= paging.US
        if not w.executable and efer & paging.EFER_NXE:
            spte |= paging.XD
        _U64.pack_into(self.host.view, self._leaf_address(gva, True), spte)
        self.fills += 1
        vcpu.mmu.tlb.invalidate(address=gva)  # the processor may hold the old shadow entry

    def _guest_update(self, gpa: int, size: int, value: int) -> None:
        memory = self.vcpu.vm.memory
        (memory.write_u32 if size == 4 else memory.write_u64)(gpa, value)

    def invlpg(self, gva: int) -> None:
        at = self._leaf_address(gva, False)
        if at is not None:
            _U64.pack_into(self.host.view, at, 0)
