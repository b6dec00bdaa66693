"""AMD AVIC, the Advanced Virtual Interrupt Controller (AMD APM Vol. 2 15.29), as the processor
performs it for a VMCB with AVIC_ENABLE (int_ctl bit 31):

- the guest's accesses to the guest-physical page AVIC_APIC_BAR names (0x098), mapped by the
  NPT, are served from the vCPU's APIC backing page (AVIC_APIC_BACKING_PAGE, 0x0E0): reads of
  the registers the APM lists come from the page; writes of TPR, EOI (of an edge-triggered
  vector), ICR high and ICR low (an IPI) are accelerated; writes of ID, LDR, DFR, SVR, ESR,
  LVTs, timer initial count and divide configuration complete into the page and then exit
  (trap-like #VMEXIT(AVIC_NOACCEL)); anything else exits before the access (fault-like
  AVIC_NOACCEL). EXITINFO1: the register offset in bits 11:4 and bit 32 for a write; EXITINFO2
  bits 31:0 the vector of an EOI that was not accelerated.
- interrupts: the highest IRR vector of the backing page whose priority class is above the PPR
  (from TPR and the highest ISR vector) is delivered through the guest's IDT when RFLAGS.IF is
  1 (IRR -> ISR), at VMRUN and whenever TPR, EOI or an IPI changed the state.
- IPIs (ICR low write, fixed delivery mode): the destination is looked up in the physical APIC ID
  table (AVIC_PHYSICAL_TABLE, 0x0F8: pointer bits 51:12, max index bits 7:0; 8-byte entries:
  host physical APIC ID 7:0, backing page 51:12, IsRunning 62, Valid 63) or, for a logical
  destination, in the logical APIC ID table (AVIC_LOGICAL_TABLE, 0x0F0; 4-byte entries: guest
  physical APIC ID 7:0, Valid 31); the vector is set in each target's backing-page IRR; a
  running target gets a doorbell, a target that is not running makes the sender exit with
  #VMEXIT(AVIC_INCOMPLETE_IPI) (EXITINFO1 = ICR high:low, EXITINFO2 = failure cause in 63:32,
  table index in 8:0), as does a bad target, table entry or backing page.
- the doorbell (MSR C001_011BH, written by the host with the target's host physical APIC ID):
  :meth:`SvmGuestContext.avic_doorbell` for a VMM; the target re-evaluates its IRR at its next
  boundary, or at its next VMRUN when it is not running.

AVIC covers xAPIC mode only (x2AVIC is another feature): an x2APIC guest's MSR accesses are
ordinary MSR_PROT intercepts. The host physical APIC ID of vCPU n is n in hvsim.
"""

from __future__ import annotations

from hvsim.core.exits import Exit, ExitKind
from hvsim.plugins.x86 import apicpage
from hvsim.plugins.x86.apicpage import EOI, ICR_HI, ICR_LO, IRR, ISR, PPR, TMR, TPR, AccessWindow, ApicPage

from .exits import SvmExitInfo

VMEXIT_AVIC_INCOMPLETE_IPI, VMEXIT_AVIC_NOACCEL = 0x401, 0x402
# AVIC_INCOMPLETE_IPI EXITINFO2[63:32] (APM Table 15-25; Linux's AVIC_IPI_FAILURE_*)
IPI_INVALID_INT_TYPE, IPI_TARGET_NOT_RUNNING, IPI_INVALID_TARGET, IPI_INVALID_BACKING_PAGE = 0, 1, 2, 3
IPI_INVALID_IPI_VECTOR = 4
PHYS_RUNNING, PHYS_VALID = 1 << 62, 1 << 63
LOGICAL_VALID = 1 << 31
ADDR = 0x000F_FFFF_FFFF_F000
MSR_AVIC_DOORBELL = 0xC001_011B

# Reads served from the backing page (APM 15.29.3.1, Table 15-23)
_READS = frozenset({0x020, 0x030, 0x080, 0x090, 0x0A0, 0x0B0, 0x0D0, 0x0E0, 0x0F0, *range(0x100, 0x280, 0x10),
                    0x280, 0x300, 0x310, *range(0x320, 0x380, 0x10), 0x380, 0x3E0})
# Writes that complete into the backing page, then #VMEXIT(AVIC_NOACCEL) as a trap
_TRAP_WRITES = frozenset({0x020, 0x0D0, 0x0E0, 0x0F0, 0x280, *range(0x320, 0x380, 0x10), 0x380, 0x3E0})


class Avic:
    """The processor's AVIC for one vCPU; reconfigured at every VMRUN."""

    def __init__(self, context) -> None:
        self.ctx, self.vcpu = context, context.vcpu
        self.host = self.vcpu.vm.host
        self.enabled = False
        self.page: ApicPage | None = None
        self.bar: int | None = None
        self.recognized = False
        self.nv = None  # (VMX posted interrupts only: the events.boundary interface)
        self._window: AccessWindow | None = None

    def configure(self) -> None:
        read = self.ctx.vmcb.read
        self.enabled = bool(read("AVIC_ENABLE"))
        mmu = self.vcpu.mmu
        bar = read("AVIC_APIC_BAR") & ADDR if self.enabled else None
        if bar != self.bar:
            self.bar = bar
            self._window = None
            mmu.tlb.invalidate()
            if bar is not None:
                apicpage.map_engine_page(self.vcpu, self.read, self.write)
        if not self.enabled:
            self.page = None
            self.recognized = False
            return
        self.page = ApicPage(self.host, read("AVIC_APIC_BACKING_PAGE") & ADDR)
        if mmu.stage2 is not None:
            window = self._window
            if window is None or window.inner is not mmu.stage2:
                window = self._window = AccessWindow(mmu.stage2, lambda gpa, _hpa: gpa & ~0xFFF == bar,
                                                     lambda _fault: None)
            mmu.stage2 = window
        self.page.w32(TPR, self.page.r32(TPR) & ~0xF0 | (read("V_TPR") & 0xF) << 4)
        self.evaluate()

    # -- the interrupt state of the backing page --------------------------------------------
    def ppr(self) -> int:
        page = self.page
        tpr, isr = page.r32(TPR) & 0xFF, page.highest(ISR)
        return tpr if tpr >> 4 >= isr >> 4 else isr & 0xF0

    def evaluate(self) -> None:
        page = self.page
        page.w32(PPR, self.ppr())
        self.recognized = page.highest(IRR) >> 4 > page.r32(PPR) >> 4
        if self.recognized and self.vcpu._in_engine:
            self.vcpu.recheck()

    def deliver(self) -> int:
        page = self.page
        vector = page.highest(IRR)
        page.set_bit(IRR, vector, False)
        page.set_bit(ISR, vector)
        self.evaluate()
        return vector

    def set_tpr(self, value: int) -> None:
        """CR8 / V_TPR and the backing page's TPR are one register under AVIC."""
        self.page.w32(TPR, value & 0xFF)
        self.ctx.vmcb.write("V_TPR", value >> 4 & 0xF)
        self.evaluate()

    # -- accesses to the APIC BAR page --------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        reg = offset & ~0xF
        if (offset & 0xF) + size <= 4 and reg in _READS:
            if reg == PPR:
                self.page.w32(PPR, self.ppr())
            return self.page.read(offset, size)
        exit = self._noaccel(offset, False)  # fault-like: the VMM emulates the read
        return exit.value or 0

    def write(self, offset: int, size: int, value: int) -> None:
        reg = offset & ~0xF
        page = self.page
        if (offset & 0xF) + size > 4:
            self._noaccel(offset, True, value)
            return
        if reg == TPR:
            page.write(offset, size, value)
            self.set_tpr(page.r32(TPR))
        elif reg == EOI:
            vector = page.highest(ISR)
            if page.bit(TMR, vector):  # level-triggered: the VMM must do the EOI (trap)
                self._noaccel(EOI, True, value, vector, trap=True)
                return
            page.set_bit(ISR, vector, False)
            self.evaluate()
        elif reg == ICR_HI:
            page.write(offset, size, value)
        elif reg == ICR_LO:
            page.write(offset, size, value)
            self._ipi(page.r32(ICR_HI) << 32 | page.r32(ICR_LO))
        elif reg in _TRAP_WRITES:
            page.write(offset, size, value)
            self._noaccel(offset, True, value, trap=True)
        else:
            self._noaccel(offset, True, value)

    def _noaccel(self, offset: int, is_write: bool, value: int | None = None, vector: int = 0,
                 trap: bool = False) -> Exit:
        info1 = (offset & 0xFF0) | (1 << 32 if is_write else 0)
        gpa = (self.bar or 0) | offset
        exit = Exit(ExitKind.MMIO, "VMEXIT_AVIC_NOACCEL", SvmExitInfo(VMEXIT_AVIC_NOACCEL, info1, vector),
                    gpa, 4, is_write, value, detail="trap" if trap else "fault")
        self.vcpu._exit(exit)
        self.evaluate()
        return exit

    # -- IPIs (15.29.4) --------------------------------------------------------------------------
    def _incomplete(self, icr: int, cause: int, index: int = 0) -> None:
        exit = Exit(ExitKind.INSTRUCTION, "VMEXIT_AVIC_INCOMPLETE_IPI",
                    SvmExitInfo(VMEXIT_AVIC_INCOMPLETE_IPI, icr, cause << 32 | index & 0x1FF), vector=icr & 0xFF)
        self.vcpu._exit(exit)
        self.evaluate()

    def _physical_entry(self, index: int) -> int | None:
        table = self.ctx.vmcb.read("AVIC_PHYSICAL_TABLE")
        if index > table & 0xFF:
            return None
        return int.from_bytes(self.host.read((table & ADDR) + 8 * index, 8), "little")

    def _ipi(self, icr: int) -> None:
        vector, mode, shorthand = icr & 0xFF, icr >> 8 & 7, icr >> 18 & 3
        if mode != 0:  # only fixed interrupts are accelerated
            return self._incomplete(icr, IPI_INVALID_INT_TYPE)
        if vector < 16:
            return self._incomplete(icr, IPI_INVALID_IPI_VECTOR)
        if shorthand == 1:  # self
            self.page.set_bit(IRR, vector)
            self.evaluate()
            return
        if shorthand in (2, 3):  # all including / excluding self: every valid entry of the table
            table = self.ctx.vmcb.read("AVIC_PHYSICAL_TABLE")
            targets = [i for i in range((table & 0xFF) + 1)
                       if (self._physical_entry(i) or 0) & PHYS_VALID
                       and (shorthand == 2 or (self._physical_entry(i) & ADDR) != self.page.base)]
        else:
            dest = icr >> 56 & 0xFF
            if icr & (1 << 11):  # logical destination, flat model: one logical-table entry per bit
                logical = self.ctx.vmcb.read("AVIC_LOGICAL_TABLE") & ADDR
                targets = []
                for bit in range(8):
                    if dest >> bit & 1:
                        entry = int.from_bytes(self.host.read(logical + 4 * bit, 4), "little")
                        if not entry & LOGICAL_VALID:
                            return self._incomplete(icr, IPI_INVALID_TARGET, bit)
                        targets.append(entry & 0xFF)
            else:
                targets = [dest]
        for index in targets:
            entry = self._physical_entry(index)
            if entry is None or not entry & PHYS_VALID:
                return self._incomplete(icr, IPI_INVALID_TARGET, index)
            backing = entry & ADDR
            if backing + 0x1000 > self.host.size:
                return self._incomplete(icr, IPI_INVALID_BACKING_PAGE, index)
            target = ApicPage(self.host, backing)
            target.set_bit(IRR, vector)
            if entry & PHYS_RUNNING:
                self.ctx.avic_doorbell(entry & 0xFF)
            else:
                return self._incomplete(icr, IPI_TARGET_NOT_RUNNING, index)
        self.evaluate()
