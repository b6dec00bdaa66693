"""GICv3 for the arm_el2 guest, as KVM's vGIC provides it: the distributor and redistributors
emulated in software (MMIO), interrupts delivered through the list registers of each vCPU's
virtual CPU interface (:mod:`.vcpuif`).

Arm GIC architecture specification (IHI 0069) chapters "Distributor, Redistributor" register
maps; QEMU ``virt`` lays the GIC out (hw/arm/virt.c): GICD at 0x0800_0000 (64 KiB), the
redistributors from 0x080A_0000, one 128 KiB pair of frames per vCPU (RD_base, then SGI_base
at +64 KiB), GICR_TYPER.Last on the final one. 288 INTIDs: SGIs 0-15, PPIs 16-31, SPIs 32-287
(GICD_TYPER.ITLinesNumber = 8). One security state (GICD_CTLR.DS = 1, as QEMU virt without
EL3): GICD_CTLR has EnableGrp0 [0], EnableGrp1 [1], ARE [4] and DS [6].

What hvsim's vGIC does, as KVM's (arch/arm64/kvm/vgic): each interrupt's state (enable,
pending latch, line level, active, group, priority, edge/level, the SPI's route) is Python
state; at each entry into the guest (:meth:`VGic.flush`) the pending, enabled interrupts of
an enabled group targeting this vCPU go into free list registers, highest priority first
(ICH_HCR_EL2.UIE set when more wait than fit, so the underflow maintenance interrupt asks for
a refill); whenever the vGIC looks at them again (:meth:`VGic.sync`: at the next entry, and on
the maintenance interrupt) it reads the LRs back: an LR the guest acknowledged leaves its
interrupt active, one it EOIed retires it, a level-triggered interrupt is pending again while
its line is high. The generic timer's PPIs (27 virtual, 30 EL1 physical; 26 EL2 physical is
hvsim's own) are level-triggered lines that follow ISTATUS and not IMASK, put in LRs with the
HW bit (pINTID = INTID, as KVM maps the timer): the guest's EOI deactivates them without an
exit. The PL011's UARTINTR is SPI 1 (INTID 33), level. SGIs come from ICC_SGI1R_EL1 (trapped
to EL2 under HCR_EL2.IMO, a SYSREG exit, then generated here) and from GICR_ISPENDR0.

Not modelled: LPIs and the ITS (GICD_TYPER.LPIS = 0), message-based SPIs, GICD_TYPER2 extended
ranges, the secure state, 1-of-N SPI routing (GICD_IROUTER.Interrupt_Routing_Mode reads 0),
GICR_PROPBASER/PENDBASER (RAZ/WI). Accesses are 32-bit (8-bit for IPRIORITYR, 64-bit for
IROUTER and GICR_TYPER); reserved offsets read as zero and ignore writes, as do writes to
read-only registers; an IROUTER naming no vCPU leaves its SPI undelivered (spec: "the
interrupt is not forwarded to any PE").
"""

from __future__ import annotations

from hvsim.core.exits import Exit, ExitKind

from . import layout
from . import vcpuif as ci
from .exits import El2Record

NR_IRQS = 288
NR_SPIS = NR_IRQS - 32
GICD_SIZE = 0x1_0000
INTID_MAINTENANCE = 25

# GICD offsets
GICD_CTLR = 0x0000
GICD_TYPER = 0x0004
GICD_IIDR = 0x0008
GICD_TYPER2 = 0x000C
GICD_STATUSR = 0x0010
GICD_IGROUPR = 0x0080
GICD_ISENABLER = 0x0100
GICD_ICENABLER = 0x0180
GICD_ISPENDR = 0x0200
GICD_ICPENDR = 0x0280
GICD_ISACTIVER = 0x0300
GICD_ICACTIVER = 0x0380
GICD_IPRIORITYR = 0x0400
GICD_ITARGETSR = 0x0800
GICD_ICFGR = 0x0C00
GICD_IGRPMODR = 0x0D00
GICD_IROUTER = 0x6000
GICD_PIDR2 = 0xFFE8

GICD_CTLR_ENABLE_G0 = 1 << 0
GICD_CTLR_ENABLE_G1 = 1 << 1
GICD_CTLR_ARE = 1 << 4
GICD_CTLR_DS = 1 << 6
GICD_CTLR_RWP = 1 << 31

# GICR offsets (RD_base; SGI_base at +0x10000)
GICR_SGI_BASE = 0x1_0000
GICR_CTLR = 0x0000
GICR_IIDR = 0x0004
GICR_TYPER = 0x0008
GICR_STATUSR = 0x0010
GICR_WAKER = 0x0014
GICR_PROPBASER = 0x0070
GICR_PENDBASER = 0x0078
GICR_WAKER_PROCESSOR_SLEEP = 1 << 1
GICR_WAKER_CHILDREN_ASLEEP = 1 << 2
GICR_TYPER_LAST = 1 << 4

IIDR = 0x4B << 24 | 0x43B  # KVM's: ProductID 0x4B, Implementer Arm (0x43B)
# GICD_TYPER: ITLinesNumber [4:0], CPUNumber [7:5], IDbits [23:19] = 15 (16 bits), No1N [25].
# PIDR4-7, PIDR0-3, CIDR0-3 from 0xFFD0 (QEMU's gicd_ids / gicr_ids): PIDR2.ArchRev [7:4] = 3.
GICD_IDS = (0x44, 0, 0, 0, 0x92, 0xB4, 0x3B, 0, 0x0D, 0xF0, 0x05, 0xB1)
GICR_IDS = (0x44, 0, 0, 0, 0x93, 0xB4, 0x3B, 0, 0x0D, 0xF0, 0x05, 0xB1)


# SGI_base registers banked per redistributor: IGROUPR0, IS/ICENABLER0, IS/ICPENDR0,
# IS/ICACTIVER0, ICFGR0 (SGIs, read-only edge) and ICFGR1 (PPIs); IPRIORITYR0-7 besides.
_SGI_BANK = frozenset((0x80, 0x100, 0x180, 0x200, 0x280, 0x300, 0x380, 0x0C00, 0x0C04))


class Irq:
    """One interrupt's state in the vGIC (a private one per vCPU, an SPI once)."""

    __slots__ = ("intid", "enabled", "latch", "level", "active", "group", "priority", "edge", "route", "hw",
                 "target", "lr_owner")

    def __init__(self, intid: int, target: int | None) -> None:
        self.intid = intid
        self.enabled = False
        self.latch = False  # pending latch (edge, or set by ISPENDR / an SGI)
        self.level = False  # the input line (level-sensitive interrupts)
        self.active = False
        self.group = 0
        self.priority = 0
        self.edge = intid < 16  # SGIs are edge, PPIs and SPIs reset to level
        self.route = 0  # GICD_IROUTER (SPIs)
        self.hw = False
        self.target = target  # the vCPU index a private interrupt belongs to / an SPI goes to
        self.lr_owner = None  # (vcpu index, LR index) while in a list register

    @property
    def pending(self) -> bool:
        return self.latch or (not self.edge and self.level)


class VGic:
    """The VM's vGIC: distributor, redistributors and the per-vCPU LR management."""

    def __init__(self, vm) -> None:
        self.vm = vm
        self.ctlr = GICD_CTLR_DS
        self.spis = [Irq(32 + n, None) for n in range(NR_SPIS)]
        self.private: list[list[Irq]] = []
        self.waker: list[int] = []
        self.cpuifs: list[ci.VirtualCpuInterface] = []

    # -- wiring -------------------------------------------------------------------------------
    def attach(self, vcpu) -> ci.VirtualCpuInterface:
        """Give ``vcpu`` its redistributor state and virtual CPU interface."""
        index = vcpu.index
        irqs = [Irq(n, index) for n in range(32)]
        self.private.append(irqs)
        self.waker.append(GICR_WAKER_PROCESSOR_SLEEP | GICR_WAKER_CHILDREN_ASLEEP)
        cpuif = ci.VirtualCpuInterface(vcpu)
        cpuif.on_deactivate = lambda pintid, v=vcpu: self._hw_deactivated(v, pintid)
        cpuif.on_maintenance = lambda v=vcpu: self._maintenance(v)
        # ICC_SGI1R_EL1 traps to EL2 (HCR_EL2.IMO: a SYSREG exit); after the exit handler the
        # write is performed here, as KVM's vgic_v3_dispatch_sgi
        cpuif.on_sgi = lambda value, group, v=vcpu: self.generate_sgi(v, value, group)
        cpuif.install(vcpu.sysreg_traps)
        # What KVM's vgic_v3_enable programs: the interface on, VMCR from the guest's view.
        cpuif.hcr = ci.ICH_HCR_EN
        cpuif.vmcr = cpuif._legal_vmcr(0)
        self.cpuifs.append(cpuif)
        for intid in (27, 30, 26):
            irqs[intid].hw = True  # the timers' PPIs, mapped as KVM maps them
        return cpuif

    def irq(self, vcpu_index: int, intid: int) -> Irq | None:
        if intid < 32:
            return self.private[vcpu_index][intid]
        if intid < NR_IRQS:
            return self.spis[intid - 32]
        return None

    def _spi_target(self, irq: Irq) -> int | None:
        """The vCPU an SPI goes to: IROUTER's affinity (ARE = 1), None when it names no vCPU."""
        aff = irq.route & 0xFF_00FF_FFFF
        for v in self.vm.vcpus:
            if layout.mpidr_affinity(v.mpidr) == aff:
                return v.index
        return None

    # -- inputs -------------------------------------------------------------------------------
    def set_level(self, vcpu_index: int, intid: int, level: bool) -> None:
        """An interrupt line (a PPI of ``vcpu_index``, or an SPI) is now ``level``."""
        irq = self.irq(vcpu_index, intid)
        if irq is None or irq.level == level:
            return
        self._sync_for(irq)
        irq.level = level
        if intid >= 32:
            self._spi_dirty = True
        if irq.edge and level:
            irq.latch = True  # edge-triggered: the rising edge latches
        self._kick_irq(irq, vcpu_index)

    def inject_edge(self, vcpu_index: int, intid: int) -> bool:
        """``hvsim_inject_event`` with an INTID: the interrupt becomes pending (latched, as an
        edge or a GICD_ISPENDR write would make it) for ``vcpu_index`` (SGIs, PPIs) or wherever
        the SPI is routed. False for an INTID the GIC does not have."""
        irq = self.irq(vcpu_index, intid)
        if irq is None:
            return False
        self._sync_for(irq)
        irq.latch = True
        if intid >= 32:
            self._spi_dirty = True
        self._kick_irq(irq)
        return True

    def _target(self, irq: Irq) -> int | None:
        return irq.target if irq.intid < 32 else self._spi_target(irq)

    def _sync_for(self, irq: Irq) -> None:
        """Fold the LRs an interrupt may be in before its state changes (so that the guest's
        earlier acknowledge is not mistaken for one of the new state)."""
        if irq.lr_owner is not None:
            owner = self.vm.vcpus[irq.lr_owner[0]]
            self.sync(owner)
            if owner.index != self._target(irq):
                self.flush(owner)  # its other LRs back at once (the kick refills the target)

    def _kick_irq(self, irq: Irq, vcpu_index: int | None = None) -> None:
        target = self._target(irq)
        if target is not None:
            self.kick(self.vm.vcpus[target])

    def kick(self, vcpu) -> None:
        """The vGIC state of ``vcpu`` changed: refresh its list registers now (KVM kicks the vCPU
        out of the guest and refills at the next entry; the result is the same)."""
        cpuif = self.cpuifs[vcpu.index]
        cpuif.lr_changed = False
        self.sync(vcpu)
        self.flush(vcpu)

    def entry(self, vcpu) -> None:
        """Before the guest runs: fold and refill the LRs if the guest or the hypervisor
        changed them since the vGIC last did (every other change refills at once)."""
        if self.cpuifs[vcpu.index].lr_changed:
            self.kick(vcpu)

    # -- the LRs ------------------------------------------------------------------------------
    def _group_enabled(self, irq: Irq) -> bool:
        return bool(self.ctlr & (GICD_CTLR_ENABLE_G1 if irq.group else GICD_CTLR_ENABLE_G0))

    def _candidates(self, vcpu) -> list[Irq]:
        index = vcpu.index
        out = [irq for irq in self.private[index]
               if irq.pending and irq.enabled and not irq.active and self._group_enabled(irq)]
        if self.ctlr & GICD_CTLR_ARE:
            out += [irq for irq in self._live_spis() if irq.pending and irq.enabled and not irq.active
                    and self._group_enabled(irq) and self._spi_target(irq) == index]
        return out

    _spi_dirty = True
    _spi_live: list[Irq] = []

    def _live_spis(self) -> list[Irq]:
        """The SPIs that are pending, asserted or active (the others need no LR): recomputed
        only after something may have changed one (``_spi_dirty``), not at every entry."""
        if self._spi_dirty:
            self._spi_live = [irq for irq in self.spis if irq.latch or irq.level or irq.active]
            self._spi_dirty = False
        return self._spi_live

    def sync(self, vcpu) -> None:
        """Read back the LRs the vGIC filled (vgic_v3_fold_lr_state), then free them. Only what
        the guest changed since the flush is folded: the vGIC state may have changed too (an
        SGI latched again, an ICACTIVER write) and that stays."""
        index = vcpu.index
        cpuif = self.cpuifs[index]
        for n, lr in enumerate(cpuif.lr):
            irq = self._lr_irq(index, n)
            if irq is None:
                continue
            written = self._lr_written[index][n]
            if written & ci.ICH_LR_PENDING and not lr & ci.ICH_LR_PENDING:
                irq.latch = False  # acknowledged (a level interrupt stays pending while its line is high)
            if (written ^ lr) & ci.ICH_LR_ACTIVE:
                irq.active = bool(lr & ci.ICH_LR_ACTIVE)
            irq.lr_owner = None
            cpuif.lr[n] = 0
            self._owned[index] &= ~(1 << n)
            if irq.intid >= 32:
                self._spi_dirty = True

    _owned: list[int]

    def _lr_irq(self, vcpu_index: int, n: int) -> Irq | None:
        if not self._owned[vcpu_index] >> n & 1:
            return None
        return self._lr_map[vcpu_index][n]

    def flush(self, vcpu) -> None:
        """Fill the free LRs, highest priority first (vgic_flush_lr_state); the active
        interrupts the guest has not deactivated keep their LR (active, and pending again if so)."""
        index = vcpu.index
        cpuif = self.cpuifs[index]
        # the guest's active ones first: they must stay visible to its EOI/DIR
        wanted = [irq for irq in self.private[index] if irq.active]
        wanted += [irq for irq in self._live_spis() if irq.active and irq.lr_owner is None
                   and self._last_cpu.get(irq.intid) == index]
        wanted += sorted(self._candidates(vcpu), key=lambda i: (i.priority, i.intid))
        free = [n for n in range(ci.LIST_REGS)
                if not cpuif.lr[n] & ci.ICH_LR_STATE and not (cpuif.lr[n] & ci.ICH_LR_EOI and not cpuif.lr[n] & ci.ICH_LR_HW)
                and not self._foreign(index, n, cpuif)]
        overflow = False
        for irq in wanted:
            if not free:
                overflow = True
                break
            n = free.pop(0)
            state = 0
            if irq.pending and not (irq.active and irq.hw):
                state |= ci.ICH_LR_PENDING
            if irq.active:
                state |= ci.ICH_LR_ACTIVE
            lr = state | irq.intid | irq.priority << ci.ICH_LR_PRIORITY_SHIFT
            if irq.group:
                lr |= ci.ICH_LR_GROUP
            if irq.hw:
                lr |= ci.ICH_LR_HW | irq.intid << ci.ICH_LR_PINTID_SHIFT
            elif not irq.edge:
                lr |= ci.ICH_LR_EOI  # a level interrupt is re-sampled after the guest's EOI (maintenance)
            cpuif.lr[n] = self._lr_written[index][n] = lr
            irq.lr_owner = (index, n)
            if irq.intid >= 32:
                self._last_cpu[irq.intid] = index
            self._owned[index] |= 1 << n
            self._lr_map[index][n] = irq
        if overflow:
            cpuif.hcr |= ci.ICH_HCR_UIE
        else:
            cpuif.hcr &= ~ci.ICH_HCR_UIE
        cpuif.update()

    def _foreign(self, index: int, n: int, cpuif) -> bool:
        """An LR the hypervisor's own code programmed (not the vGIC's): left alone."""
        return bool(cpuif.lr[n]) and not self._owned[index] >> n & 1

    def _hw_deactivated(self, vcpu, pintid: int) -> None:
        """The guest deactivated an LR with HW = 1: the physical interrupt is deactivated, a
        level still high is pending again (picked up at the next flush)."""
        irq = self.irq(vcpu.index, pintid)
        if irq is not None:
            irq.active = False
            if pintid >= 32:
                self._spi_dirty = True
            if irq.pending:  # still asserted: the physical interrupt is signalled again
                self.kick(vcpu)

    def _maintenance(self, vcpu) -> None:
        """PPI 25 to EL2: an EVENT exit; the vGIC then folds and refills the LRs (KVM's
        vgic_v3_maintenance handling is the sync/flush around every exit)."""
        if self._in_maintenance:
            return
        self._in_maintenance = True
        try:
            exit = Exit(ExitKind.EVENT, "maintenance interrupt", El2Record(0), vector=INTID_MAINTENANCE)
            self.vm.dispatch(vcpu, exit)
        finally:
            self._in_maintenance = False

    _in_maintenance = False

    def handle_maintenance(self, vcpu, exit) -> None:
        """The EVENT exit handler for the maintenance interrupt: fold the LRs and refill them."""
        if exit.vector == INTID_MAINTENANCE:
            self.kick(vcpu)

    # -- SGIs ---------------------------------------------------------------------------------
    def generate_sgi(self, vcpu, value: int, group: int) -> None:
        """ICC_SGI1R_EL1: TargetList [15:0], Aff1 [23:16], INTID [27:24], Aff2 [39:32], IRM [40],
        RS [47:44], Aff3 [55:48]. IRM = 1: every vCPU but this one."""
        intid = value >> 24 & 0xF
        if value >> 40 & 1:
            targets = [v for v in self.vm.vcpus if v is not vcpu]
        else:
            base = (value >> 16 & 0xFF) << 8 | (value >> 32 & 0xFF) << 16 | (value >> 48 & 0xFF) << 24
            rs = value >> 44 & 0xF
            targets = []
            for v in self.vm.vcpus:
                aff = layout.mpidr_affinity(v.mpidr)
                aff0 = aff & 0xFF
                if aff & ~0xFF == base and aff0 >> 4 == rs and value >> (aff0 & 0xF) & 1:
                    targets.append(v)
        for v in targets:
            irq = self.private[v.index][intid]
            if irq.group != group:
                continue  # SGI1R makes group-1 SGIs, SGI0R group-0 ones: another group's is not forwarded
            self._sync_for(irq)
            irq.latch = True
            self.kick(v)

    # -- MMIO ---------------------------------------------------------------------------------
    def _regs_irqs(self, vcpu_index: int | None, first: int, count: int) -> list[Irq | None]:
        out = []
        for n in range(first, first + count):
            if n < 32:
                out.append(self.private[vcpu_index][n] if vcpu_index is not None else None)
            else:
                out.append(self.spis[n - 32] if n < NR_IRQS else None)
        return out

    def _bank_read(self, offset: int, vcpu_index: int | None) -> int | None:
        """The registers GICD and GICR's SGI_base share (IGROUPR ... ICFGR): None if not one."""
        if GICD_IGROUPR <= offset < GICD_IGROUPR + 0x80:
            return self._bits(offset - GICD_IGROUPR, vcpu_index, lambda i: i.group)
        for base in (GICD_ISENABLER, GICD_ICENABLER):
            if base <= offset < base + 0x80:
                return self._bits(offset - base, vcpu_index, lambda i: i.enabled)
        for base in (GICD_ISPENDR, GICD_ICPENDR):
            if base <= offset < base + 0x80:
                return self._bits(offset - base, vcpu_index, lambda i: i.pending)
        for base in (GICD_ISACTIVER, GICD_ICACTIVER):
            if base <= offset < base + 0x80:
                return self._bits(offset - base, vcpu_index, lambda i: i.active)
        if GICD_IPRIORITYR <= offset < GICD_IPRIORITYR + 0x400:
            first = offset - GICD_IPRIORITYR
            value = 0
            for k, irq in enumerate(self._regs_irqs(vcpu_index, first, 4)):
                if irq is not None:
                    value |= irq.priority << (8 * k)
            return value
        if GICD_ICFGR <= offset < GICD_ICFGR + 0x100:
            first = (offset - GICD_ICFGR) * 4
            value = 0
            for k, irq in enumerate(self._regs_irqs(vcpu_index, first, 16)):
                if irq is not None and irq.edge:
                    value |= 2 << (2 * k)
            return value
        if GICD_IGRPMODR <= offset < GICD_IGRPMODR + 0x80:
            return 0  # DS = 1: RAZ/WI
        return None

    def _bits(self, byte_offset: int, vcpu_index, get) -> int:
        value = 0
        for k, irq in enumerate(self._regs_irqs(vcpu_index, byte_offset * 8, 32)):
            if irq is not None and get(irq):
                value |= 1 << k
        return value

    def _bank_write(self, offset: int, value: int, vcpu_index: int | None) -> bool:
        touched: list[Irq] = []
        self._spi_dirty = True
        for v in self.vm.vcpus:
            self.sync(v)

        def each(base: int, fn) -> bool:
            if base <= offset < base + 0x80:
                for k, irq in enumerate(self._regs_irqs(vcpu_index, (offset - base) * 8, 32)):
                    if irq is not None and value >> k & 1:
                        fn(irq)
                        touched.append(irq)
                return True
            return False

        def set_attr(name, v):
            return lambda irq: setattr(irq, name, v)

        if GICD_IGROUPR <= offset < GICD_IGROUPR + 0x80:
            for k, irq in enumerate(self._regs_irqs(vcpu_index, (offset - GICD_IGROUPR) * 8, 32)):
                if irq is not None:
                    irq.group = value >> k & 1
                    touched.append(irq)
        elif each(GICD_ISENABLER, set_attr("enabled", True)) or each(GICD_ICENABLER, set_attr("enabled", False)):
            pass
        elif each(GICD_ISPENDR, set_attr("latch", True)) or each(GICD_ICPENDR, set_attr("latch", False)):
            pass
        elif each(GICD_ISACTIVER, set_attr("active", True)) or each(GICD_ICACTIVER, set_attr("active", False)):
            pass
        elif GICD_IPRIORITYR <= offset < GICD_IPRIORITYR + 0x400:
            for k, irq in enumerate(self._regs_irqs(vcpu_index, offset - GICD_IPRIORITYR, self._size)):
                if irq is not None:
                    irq.priority = value >> (8 * k) & ci._PRI_MASK
                    touched.append(irq)
        elif GICD_ICFGR <= offset < GICD_ICFGR + 0x100:
            for k, irq in enumerate(self._regs_irqs(vcpu_index, (offset - GICD_ICFGR) * 4, 16)):
                if irq is not None and irq.intid >= 16:  # SGIs are edge, read-only
                    irq.edge = bool(value >> (2 * k + 1) & 1)
                    touched.append(irq)
        elif GICD_IGRPMODR <= offset < GICD_IGRPMODR + 0x80:
            pass
        else:
            self._refresh_all()
            return False
        self._refresh_all()  # the LRs were folded above: fill them again
        return True

    _size = 4

    def _refresh_all(self) -> None:
        for v in self.vm.vcpus:
            self.kick(v)

    # GICD
    def dist_read(self, offset: int, size: int) -> int:
        self._size = size
        if offset == GICD_CTLR:
            return self.ctlr
        if offset == GICD_TYPER:
            cpus = min(len(self.vm.vcpus) - 1, 7)
            return (NR_IRQS // 32 - 1) | cpus << 5 | 15 << 19 | 1 << 25
        if offset == GICD_IIDR:
            return IIDR
        if offset < 0x80:
            return 0
        if offset >= GICD_IROUTER + 32 * 8 and offset < GICD_IROUTER + NR_IRQS * 8:
            n = (offset - GICD_IROUTER) // 8
            value = self.spis[n - 32].route
            return value >> 32 if offset % 8 else (value if size == 8 else value & 0xFFFF_FFFF)
        if 0xFFD0 <= offset < 0x10000 and offset % 4 == 0:
            return GICD_IDS[(offset - 0xFFD0) // 4]
        if offset < 0x0C00 + 0x100 or GICD_IGRPMODR <= offset < GICD_IGRPMODR + 0x80:
            # banked: SGIs/PPIs read as zero through GICD when ARE = 1 (they are in GICR)
            value = self._bank_read(offset, None)
            return 0 if value is None else value
        return 0

    def dist_write(self, offset: int, size: int, value: int) -> None:
        self._size = size
        if offset == GICD_CTLR:
            mask = GICD_CTLR_ENABLE_G0 | GICD_CTLR_ENABLE_G1 | GICD_CTLR_ARE
            self.ctlr = (value & mask) | GICD_CTLR_DS
            self._refresh_all()
            return
        if GICD_IROUTER + 32 * 8 <= offset < GICD_IROUTER + NR_IRQS * 8:
            n = (offset - GICD_IROUTER) // 8
            irq = self.spis[n - 32]
            mask = 0xFF_00FF_FFFF  # Aff3, Aff2..Aff0; Interrupt_Routing_Mode (bit 31) not supported
            if size == 8:
                irq.route = value & mask
            elif offset % 8:
                irq.route = (irq.route & 0xFFFF_FFFF) | (value & 0xFF) << 32
            else:
                irq.route = (irq.route & ~0xFFFF_FFFF) | (value & 0x00FF_FFFF)
            self._refresh_all()
            return
        if 0x80 <= offset < 0x0C00 + 0x100 or GICD_IGRPMODR <= offset < GICD_IGRPMODR + 0x80:
            self._bank_write(offset, value, None)
        # anything else (TYPER, IIDR, PIDR, reserved): read-only or RAZ/WI

    # GICR
    def redist_read(self, offset: int, size: int) -> int:
        self._size = size
        index, off = divmod(offset, layout.GICR_STRIDE)
        if index >= len(self.vm.vcpus):
            return 0
        if off >= GICR_SGI_BASE:
            off -= GICR_SGI_BASE
            if off in _SGI_BANK or GICD_IPRIORITYR <= off < GICD_IPRIORITYR + 0x20:
                return self._bank_read(off, index)
            return 0  # IGRPMODR0 (DS = 1), NSACR and reserved offsets: RAZ
        if off == GICR_CTLR:
            return 0
        if off == GICR_IIDR:
            return IIDR
        if off in (GICR_TYPER, GICR_TYPER + 4):
            v = self.vm.vcpus[index]
            typer = layout.mpidr_affinity(v.mpidr) << 32 | index << 8
            if index == len(self.vm.vcpus) - 1:
                typer |= GICR_TYPER_LAST
            if off == GICR_TYPER + 4:
                return typer >> 32
            return typer if size == 8 else typer & 0xFFFF_FFFF
        if off == GICR_WAKER:
            return self.waker[index]
        if 0xFFD0 <= off < 0x10000 and off % 4 == 0:
            return GICR_IDS[(off - 0xFFD0) // 4]
        return 0

    def redist_write(self, offset: int, size: int, value: int) -> None:
        self._size = size
        index, off = divmod(offset, layout.GICR_STRIDE)
        if index >= len(self.vm.vcpus):
            return
        if off >= GICR_SGI_BASE:
            off -= GICR_SGI_BASE
            if off in _SGI_BANK or GICD_IPRIORITYR <= off < GICD_IPRIORITYR + 0x20:
                self._bank_write(off, value, index)
            return
        if off == GICR_WAKER:
            sleep = value & GICR_WAKER_PROCESSOR_SLEEP
            # ChildrenAsleep follows ProcessorSleep at once (read-only)
            self.waker[index] = sleep | (GICR_WAKER_CHILDREN_ASLEEP if sleep else 0)


class _Frame:
    """An MMIO device over one of the vGIC's register frames (the device bus's interface)."""

    def __init__(self, read, write) -> None:
        self._read = read
        self.write = write

    def read(self, offset: int, size: int) -> int:
        return self._read(offset, size) & ((1 << (8 * size)) - 1)


def install(vm) -> VGic:
    """Build the vGIC and map GICD and the GICR frames on the device bus."""
    gic = VGic(vm)
    gic._owned = [0] * vm.config.vcpus
    gic._lr_map = [[None] * ci.LIST_REGS for _ in range(vm.config.vcpus)]
    gic._lr_written = [[0] * ci.LIST_REGS for _ in range(vm.config.vcpus)]
    gic._last_cpu = {}
    vm.bus.add_mmio(layout.GICD_BASE, GICD_SIZE, _Frame(gic.dist_read, gic.dist_write), "GICv3 distributor")
    vm.bus.add_mmio(layout.GICR_BASE, layout.GICR_STRIDE * vm.config.vcpus,
                    _Frame(gic.redist_read, gic.redist_write), "GICv3 redistributors")
    return gic
