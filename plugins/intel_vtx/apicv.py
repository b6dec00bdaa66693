"""APIC virtualization and virtual interrupts (Intel SDM Vol. 3C chapter 30), as the processor
performs them for the controls the VMM set:

- "use TPR shadow" (primary bit 21): MOV CR8 reads and writes VTPR (offset 080H of the
  virtual-APIC page); without virtual-interrupt delivery a VTPR[7:4] below the TPR threshold is
  a trap-like TPR-below-threshold exit (reason 43). MOV CR8 itself is in vmm.py.
- "virtualize APIC accesses" (secondary bit 0): linear accesses to the page the EPT maps to
  APIC_ACCESS_ADDR are served from the virtual-APIC page (30.4.2, 30.4.3) or become APIC-access
  exits (reason 44; qualification: page offset in 11:0, access type in 15:12, Table 28-6).
- "APIC-register virtualization" (bit 8): the longer read / write lists of 30.4.2 / 30.4.3.1;
  writes that need the VMM complete as trap-like APIC-write exits (reason 56, qualification =
  page offset).
- "virtual-interrupt delivery" (bit 9): RVI / SVI in GUEST_INTR_STATUS (0x0810), PPR
  virtualization, evaluation and delivery of pending virtual interrupts (30.2), EOI
  virtualization with the EOI-exit bitmaps (EOI-induced exits, reason 45, qualification =
  vector), self-IPI virtualization, at VM entry and after TPR / EOI / self-IPI writes.
- "virtualize x2APIC mode" (bit 4): RDMSR / WRMSR of 800H-8FFH the MSR bitmap lets through
  (30.5): 808H (TPR), 80BH (EOI), 83FH (SELF IPI).
- "process posted interrupts" (pin-based bit 7): an external interrupt with the notification
  vector is not an exit: the descriptor's PIR is ORed into VIRR, RVI raised, and pending virtual
  interrupts evaluated (30.6). :meth:`VirtualApic.post` is the VMM's side (set a PIR bit and ON,
  send the notification); the notification is an external interrupt queued on the vCPU, so a
  vCPU in the engine takes it at its next boundary, a halted one wakes, and one not running
  processes it right after its next VM entry.

Where hvsim differs from a processor: the engine reports an access to the APIC-access page from
inside the instruction, without syncing RIP, so APIC-access and APIC-write exits from such an
access record no guest RIP (as hvsim's MMIO exits); a virtual interrupt that a write made
deliverable is taken at the end of the engine's translation block, not always at the next
instruction. Virtualization works with EPT; without it the APIC-access page is plain memory.
"""

from __future__ import annotations

from hvsim.core.exits import Event, EventType, Exit, ExitKind
from hvsim.plugins.x86 import apicpage
from hvsim.plugins.x86.apicpage import EOI, ICR_HI, ICR_LO, IRR, ISR, PPR, TPR, AccessWindow, ApicPage

from . import msrs
from .exits import VmxExitInfo
from .vmcs import Field

EXIT_REASON_TPR_BELOW_THRESHOLD, EXIT_REASON_APIC_ACCESS, EXIT_REASON_EOI_INDUCED = 43, 44, 45
EXIT_REASON_APIC_WRITE = 56
# APIC-access exit qualification, access type in bits 15:12 (SDM Table 28-6)
ACCESS_LINEAR_READ, ACCESS_LINEAR_WRITE, ACCESS_LINEAR_FETCH, ACCESS_LINEAR_EVENT = 0, 1, 2, 3
ACCESS_PHYSICAL_EVENT, ACCESS_PHYSICAL = 10, 15
PI_ON_BYTE = 32  # the outstanding-notification bit is bit 256 of the descriptor (SDM 30.6)

# Reads virtualized with "APIC-register virtualization" (SDM 30.4.2): the first 4 bytes of these
_READ_REGS = frozenset({0x020, 0x030, 0x080, 0x0B0, 0x0D0, 0x0E0, 0x0F0, *range(0x100, 0x280, 0x10), 0x280,
                        0x300, 0x310, *range(0x320, 0x380, 0x10), 0x380, 0x3E0})
# Writes virtualized with "APIC-register virtualization" (SDM 30.4.3.1)
_WRITE_REGS = frozenset({0x020, 0x080, 0x0B0, 0x0D0, 0x0E0, 0x0F0, 0x280, 0x300, 0x310,
                         *range(0x320, 0x380, 0x10), 0x380, 0x3E0})
_WRITE_REGS_VID = frozenset({0x080, 0x0B0, 0x300})  # without it, with virtual-interrupt delivery
# x2APIC MSRs RDMSR reads from the virtual-APIC page with APIC-register virtualization (30.5)
_X2APIC_READS = frozenset({0x802, 0x803, 0x808, 0x80A, 0x80B, 0x80D, 0x80F, *range(0x810, 0x828), 0x828,
                           0x830, *range(0x832, 0x839), 0x83E})
MSR_X2APIC_TPR, MSR_X2APIC_EOI, MSR_X2APIC_SELF_IPI = 0x808, 0x80B, 0x83F


def _self_ipi_vector(icr: int) -> int | None:
    """SDM 30.4.3.2 for a write to ICR low: the vector if the write asks for a fixed, edge,
    self-shorthand IPI with vector >= 16 and reserved bits clear, else None."""
    if icr & 0xFFF3_2000 or (icr >> 18) & 3 != 1 or icr & (1 << 15) or icr & 0x700:
        return None
    vector = icr & 0xFF
    return vector if vector >= 16 else None


class VirtualApic:
    """The processor's APIC virtualization for one VMX vCPU, reconfigured at every VM entry."""

    def __init__(self, context) -> None:
        self.ctx, self.vcpu = context, context.vcpu
        self.host = self.vcpu.vm.host
        self.page: ApicPage | None = None
        self.shadow = self.vid = self.regvirt = self.x2apic = False
        self.access_addr: int | None = None
        self.nv: int | None = None  # the posted-interrupt notification vector while processing is on
        self.recognized = False  # a virtual interrupt is recognized (30.2.1)
        self._windows: dict[int, AccessWindow] = {}

    @property
    def values(self) -> dict:
        return self.ctx._values

    # -- VM entry ---------------------------------------------------------------------------
    def configure(self, pin: int, proc: int, proc2: int) -> None:
        v = self.values
        self.shadow = bool(proc & msrs.CPU_BASED_TPR_SHADOW)
        self.page = ApicPage(self.host, v[Field.VIRTUAL_APIC_PAGE_ADDR]) if self.shadow else None
        self.vid = bool(self.shadow and proc2 & msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY)
        self.regvirt = bool(self.shadow and proc2 & msrs.SECONDARY_EXEC_APIC_REGISTER_VIRT)
        self.x2apic = bool(self.shadow and proc2 & msrs.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE)
        self.nv = v.get(Field.POSTED_INTR_NV, 0) & 0xFF if pin & msrs.PIN_BASED_POSTED_INTR else None
        access = v.get(Field.APIC_ACCESS_ADDR, 0) if proc2 & msrs.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES else None
        mmu = self.vcpu.mmu
        if access != self.access_addr:
            self.access_addr = access
            self._windows.clear()
            mmu.tlb.invalidate()  # translations of the page, as memory or as the APIC page, go
            if access is not None:
                apicpage.map_engine_page(self.vcpu, self.read, self.write)
        if access is not None and mmu.stage2 is not None:
            inner = mmu.stage2
            window = self._windows.get(id(inner))
            if window is None or window.inner is not inner:
                window = self._windows[id(inner)] = AccessWindow(
                    inner, lambda _gpa, hpa: (hpa & ~0xFFF) == access, lambda _fault: None)
            mmu.stage2 = window
        # SDM 27.3.2.5: with virtual-interrupt delivery, VM entry loads RVI / SVI from the guest
        # interrupt status, performs PPR virtualization and evaluates pending virtual interrupts.
        if self.vid:
            self.ppr_virtualization()
            self.evaluate()
        else:
            self.recognized = False

    # -- RVI / SVI and the virtual-APIC page (SDM 30.1, 30.2) -------------------------------
    def status(self) -> tuple[int, int]:
        status = self.values.get(Field.GUEST_INTR_STATUS, 0)
        return status & 0xFF, status >> 8 & 0xFF

    def _set_status(self, rvi: int, svi: int) -> None:
        self.values[Field.GUEST_INTR_STATUS] = rvi | svi << 8

    def ppr_virtualization(self) -> None:
        """30.1.3: VPPR <- VTPR & FFH if VTPR[7:4] >= SVI[7:4], else SVI & F0H."""
        page, (_rvi, svi) = self.page, self.status()
        vtpr = page.r32(TPR)
        page.w32(PPR, vtpr & 0xFF if (vtpr >> 4 & 0xF) >= svi >> 4 else svi & 0xF0)

    def evaluate(self) -> None:
        """30.2.1: a virtual interrupt is recognized if RVI[7:4] > VPPR[7:4]; it is delivered at
        the next boundary the guest can take it at (events.boundary)."""
        rvi, _svi = self.status()
        self.recognized = self.vid and rvi >> 4 > (self.page.r32(PPR) >> 4 & 0xF)
        if self.recognized and self.vcpu._in_engine:
            self.vcpu.recheck()

    def deliver(self) -> int:
        """30.2.2: virtual-interrupt delivery; returns the vector for the guest's IDT."""
        page, (vector, _svi) = self.page, self.status()
        page.set_bit(ISR, vector)
        page.w32(PPR, vector & 0xF0)
        page.set_bit(IRR, vector, False)
        self._set_status(page.highest(IRR), vector)
        self.recognized = False
        return vector

    def tpr_virtualization(self, rip: int | None = None) -> None:
        """30.1.2, after VTPR was written."""
        if not self.vid:
            threshold = self.values.get(Field.TPR_THRESHOLD, 0) & 0xF
            if (self.page.r32(TPR) >> 4 & 0xF) < threshold:
                self._trap_exit(EXIT_REASON_TPR_BELOW_THRESHOLD, 0, rip)
            return
        self.ppr_virtualization()
        self.evaluate()

    def eoi_virtualization(self, rip: int | None = None) -> None:
        """30.1.4: the in-service vector SVI ends; an EOI-induced exit if its EOI-exit bitmap bit
        is set, else pending virtual interrupts are evaluated."""
        page, (rvi, vector) = self.page, self.status()
        page.set_bit(ISR, vector, False)
        self._set_status(rvi, page.highest(ISR))
        self.ppr_virtualization()
        bitmap = self.values.get(Field.EOI_EXIT_BITMAP0 + 2 * (vector >> 6), 0)
        if bitmap >> (vector & 63) & 1:
            self._trap_exit(EXIT_REASON_EOI_INDUCED, vector, rip)
        else:
            self.evaluate()

    def self_ipi_virtualization(self, vector: int) -> None:
        """30.1.5: VIRR[vector] <- 1, RVI <- max(RVI, vector), then evaluation."""
        self.page.set_bit(IRR, vector)
        rvi, svi = self.status()
        self._set_status(max(rvi, vector), svi)
        self.evaluate()

    # -- posted interrupts (SDM 30.6) --------------------------------------------------------
    def process_posted(self) -> None:
        """The notification vector arrived: ON cleared, PIR ORed into VIRR and cleared, RVI
        raised to the highest vector posted, pending virtual interrupts evaluated."""
        desc = self.values.get(Field.POSTED_INTR_DESC_ADDR, 0)
        host = self.host
        host.write(desc + PI_ON_BYTE, bytes([host.read(desc + PI_ON_BYTE, 1)[0] & ~1]))
        pir = int.from_bytes(host.read(desc, 32), "little")
        host.write(desc, bytes(32))
        if pir:
            page = self.page
            for unit in range(8):
                bits = pir >> (32 * unit) & 0xFFFF_FFFF
                if bits:
                    page.w32(IRR + 0x10 * unit, page.r32(IRR + 0x10 * unit) | bits)
            rvi, svi = self.status()
            self._set_status(max(rvi, pir.bit_length() - 1), svi)
        self.evaluate()

    def post(self, vector: int) -> bool:
        """The VMM's side of a posted interrupt (what KVM's vmx_deliver_posted_interrupt does):
        set the vector's PIR bit, then ON; if ON was clear, send the notification. Returns
        whether a notification was sent."""
        desc = self.values.get(Field.POSTED_INTR_DESC_ADDR, 0)
        host = self.host
        at = desc + (vector >> 3)
        host.write(at, bytes([host.read(at, 1)[0] | 1 << (vector & 7)]))
        on = host.read(desc + PI_ON_BYTE, 1)[0]
        if on & 1:
            return False
        host.write(desc + PI_ON_BYTE, bytes([on | 1]))
        self.notify()
        return True

    def notify(self) -> None:
        """Send the notification: an external interrupt with POSTED_INTR_NV to this vCPU."""
        vector = self.values.get(Field.POSTED_INTR_NV, 0) & 0xFF
        self.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, vector))

    # -- the APIC-access page (SDM 30.4) ------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """A guest load from the APIC-access page: virtualized, or an APIC-access exit whose
        handler supplies the value (as hvsim's MMIO exits do)."""
        if self.shadow:
            reg = offset & ~0xF
            inside = (offset & 0xF) + size <= 4
            if inside and (reg == TPR or self.regvirt and reg in _READ_REGS):
                return self.page.read(offset, size)
        exit = self._access_exit(offset, size, False, None)
        return exit.value or 0

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest store to the APIC-access page: virtualized (written to the virtual-APIC page,
        then APIC-write emulation, 30.4.3.2) or an APIC-access exit."""
        reg = offset & ~0xF
        allowed = (_WRITE_REGS if self.regvirt else _WRITE_REGS_VID if self.vid else (TPR,)) if self.shadow else ()
        if (offset & 0xF) + size > 4 or reg not in allowed:
            self._access_exit(offset, size, True, value)
            return
        page = self.page
        page.write(offset, size, value)
        if reg == TPR:
            page.w32(TPR, page.r32(TPR) & 0xFF)  # bytes 081H-083H cleared
            self.tpr_virtualization()
        elif reg == EOI and self.vid:
            self.eoi_virtualization()
        elif reg == ICR_LO and self.vid and _self_ipi_vector(page.r32(ICR_LO)) is not None:
            self.self_ipi_virtualization(_self_ipi_vector(page.r32(ICR_LO)))
        elif reg == ICR_HI:
            page.w32(ICR_HI, page.r32(ICR_HI) & 0xFF00_0000)  # bytes 2:0 cleared, nothing else
        else:
            self._trap_exit(EXIT_REASON_APIC_WRITE, offset, None)

    def _access_exit(self, offset: int, size: int, is_write: bool, value: int | None) -> Exit:
        window = next(iter(self._windows.values()), None)
        gpa = (window.gpa_page if window is not None else 0) | offset
        qual = offset | (ACCESS_LINEAR_WRITE if is_write else ACCESS_LINEAR_READ) << 12
        exit = Exit(ExitKind.MMIO, "EXIT_REASON_APIC_ACCESS", VmxExitInfo(EXIT_REASON_APIC_ACCESS, qual),
                    gpa, size, is_write, value)
        self.vcpu._exit(exit)
        self._reentered()
        return exit

    def _reentered(self) -> None:
        """hvsim completes this exit inside the engine; the VM entry that follows it on a
        processor performs PPR virtualization and evaluation with what the VMM left (27.3.2.5)."""
        if self.vid:
            self.ppr_virtualization()
            self.evaluate()

    def _trap_exit(self, reason: int, qualification: int, rip: int | None) -> None:
        """A trap-like exit (TPR below threshold, EOI-induced, APIC write): after the access."""
        name = {EXIT_REASON_TPR_BELOW_THRESHOLD: "EXIT_REASON_TPR_BELOW_THRESHOLD",
                EXIT_REASON_EOI_INDUCED: "EXIT_REASON_EOI_INDUCED",
                EXIT_REASON_APIC_WRITE: "EXIT_REASON_APIC_WRITE"}[reason]
        exit = Exit(ExitKind.INSTRUCTION, name, VmxExitInfo(reason, qualification, rip), vector=qualification)
        self.vcpu._exit(exit)
        self._reentered()

    # -- x2APIC MSRs (SDM 30.5) ----------------------------------------------------------------
    def msr(self, is_write: bool, msr: int, rip: int, length: int) -> bool | None:
        """RDMSR / WRMSR of ``msr`` (800H-8FFH) that the MSR bitmap did not intercept, with
        "virtualize x2APIC mode": True done (skip it), None RIP already moved (a fault or a
        trap-like exit), False not virtualized (the instruction behaves as without VMX)."""
        vcpu = self.vcpu
        regs = vcpu.regs
        from unicorn import x86_const as X

        if not is_write:
            if msr == MSR_X2APIC_TPR or self.regvirt and msr in _X2APIC_READS:
                value = self.page.read((msr & 0xFF) << 4, 8)
                regs.write(X.UC_X86_REG_RAX, value & 0xFFFF_FFFF)
                regs.write(X.UC_X86_REG_RDX, value >> 32)
                return True
            return False
        value = (regs.read(X.UC_X86_REG_RDX) & 0xFFFF_FFFF) << 32 | regs.read(X.UC_X86_REG_RAX) & 0xFFFF_FFFF
        if msr == MSR_X2APIC_TPR:
            if value >> 8:
                vcpu.guest_exception(13, 0, rip)
                return None
            self.page.write(TPR, 8, value)
            vcpu.set_rip(rip + length)
            self.tpr_virtualization(rip + length)
            return None
        if msr in (MSR_X2APIC_EOI, MSR_X2APIC_SELF_IPI) and self.vid:
            if msr == MSR_X2APIC_EOI and value or msr == MSR_X2APIC_SELF_IPI and value >> 8:
                vcpu.guest_exception(13, 0, rip)
                return None
            vcpu.set_rip(rip + length)
            if msr == MSR_X2APIC_EOI:
                self.page.w32(EOI, 0)
                self.eoi_virtualization(rip + length)
            else:
                self.page.w32(ICR_LO, value)  # VICR_LO <- vector, VICR_HI <- 0
                self.page.w32(ICR_HI, 0)
                if value >= 16:
                    self.self_ipi_virtualization(value)
                else:
                    self._trap_exit(EXIT_REASON_APIC_WRITE, 0x3F0, rip + length)
            return None
        return False
