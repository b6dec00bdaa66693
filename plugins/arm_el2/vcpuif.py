"""The GICv3 virtual CPU interface: the ICH_*_EL2 registers the hypervisor programs, and the
ICC_*_EL1 system registers as a guest at EL1 reaches them (served as ICV_*_EL1).

Arm GIC architecture specification (IHI 0069), chapter "Virtual interrupt handling and
prioritization" and the ICH_* / ICV_* register descriptions; Arm ARM D23.2 "HCR_EL2" (IMO/FMO
route the EL1 accesses of ICC_IAR1_EL1, ICC_EOIR1_EL1 ... to the virtual interface). QEMU
hw/intc/arm_gicv3_cpuif.c and Linux include/linux/irqchip/arm-gic-v3.h have the same layouts.

The interface of one vCPU has four list registers (ICH_VTR_EL2.ListRegs = 3, as QEMU's), five
priority and five preemption bits (PRIbits = PREbits = 4), 24-bit INTIDs (IDbits = 1). An
ICH_LR<n>_EL2 holds vINTID [31:0], pINTID [44:32] (HW = 1) or EOI [41] (HW = 0), Priority
[55:48], Group [60], HW [61] and State [63:62] (0 invalid, 1 pending, 2 active, 3 both).

What the guest sees (HCR_EL2.IMO/FMO set, ICH_HCR_EL2.En set):

- ICC_IAR1_EL1 / ICC_IAR0_EL1 read the highest-priority pending LR of that group if its group
  is enabled (ICH_VMCR_EL2.VENG1/VENG0), its priority is below ICH_VMCR_EL2.VPMR and its group
  priority preempts the running priority (ICH_AP1R0/AP0R0); the LR turns active (or active
  and pending) and the priority bit is set in the active-priority register. Otherwise 1023.
- ICC_EOIR1_EL1 / ICC_EOIR0_EL1 drop the running priority (the highest set AP bit) and, unless
  ICH_VMCR_EL2.VEOIM splits the two, deactivate the LR holding that vINTID: an LR with HW = 1
  also deactivates its pINTID at the (v)distributor, with HW = 0 and EOI = 1 the LR becomes a
  bit of ICH_EISR_EL2. An EOI whose INTID no LR holds active increments ICH_HCR_EL2.EOIcount.
  ICC_DIR_EL1 does the deactivation alone when VEOIM is set.
- ICC_PMR_EL1, ICC_BPR0/1_EL1, ICC_IGRPEN0/1_EL1 and ICC_CTLR_EL1.{CBPR,EOImode} are the
  fields of ICH_VMCR_EL2; ICC_RPR_EL1 the running priority; ICC_HPPIR0/1_EL1 the pending one.
- ICC_SRE_EL1 reads SRE = DFB = DIB = 1 (system-register interface only), writes ignored.
- ICC_SGI1R_EL1 / ICC_ASGI1R_EL1 / ICC_SGI0R_EL1 are not virtualized by the hardware: they
  trap to EL2 (ICH_HCR_EL2 / KVM's configuration), and the vGIC generates the SGIs.

The virtual IRQ (group 1) or FIQ (group 0) is signalled while the highest-priority pending LR
could be acknowledged. The maintenance interrupt (PPI 25) is asserted while ICH_HCR_EL2.En and
ICH_MISR_EL2 is not zero: it reaches EL2 as an EVENT exit (reason "maintenance interrupt",
vector 25) when the condition becomes true; hvsim does not re-deliver it while it stays high,
where hardware would interrupt EL2 again (an interrupt storm a real hypervisor must avoid).

ICH_HCR_EL2.TC, TALL0, TALL1 and TDIR trap the guest's accesses of the common, group-0,
group-1 registers and ICC_DIR_EL1 to EL2 (SYSREG exits, EC 0x18, the ICC_* encoding); after
the exit handler the access is performed by the virtual interface as if untrapped (unless the
handler supplied a value), which is what KVM's trap handlers do.

EL0 accesses are UNDEFINED (the hook lets the engine, which lacks the registers, raise it).
Not modelled: LPIs, NMIs (FEAT_GICv3_NMI), ICH_HCR_EL2.TSEI and the physical ICC interface (hvsim's guests always run at EL1 under IMO).
An LR whose vINTID is a special INTID (1020-1023), a reserved one (1024-8191) or wider than
24 bits is never acknowledged: IAR reads 1023 and it stays pending (its behaviour is
UNPREDICTABLE in the architecture).
"""

from __future__ import annotations

from hvsim.core.exits import Event, EventType

# Encodings (op0, op1, CRn, CRm, op2).
ICC_PMR_EL1 = (3, 0, 4, 6, 0)
ICC_IAR0_EL1 = (3, 0, 12, 8, 0)
ICC_EOIR0_EL1 = (3, 0, 12, 8, 1)
ICC_HPPIR0_EL1 = (3, 0, 12, 8, 2)
ICC_BPR0_EL1 = (3, 0, 12, 8, 3)
ICC_AP0R_EL1 = tuple((3, 0, 12, 8, 4 + n) for n in range(4))
ICC_AP1R_EL1 = tuple((3, 0, 12, 9, n) for n in range(4))
ICC_DIR_EL1 = (3, 0, 12, 11, 1)
ICC_RPR_EL1 = (3, 0, 12, 11, 3)
ICC_SGI1R_EL1 = (3, 0, 12, 11, 5)
ICC_ASGI1R_EL1 = (3, 0, 12, 11, 6)
ICC_SGI0R_EL1 = (3, 0, 12, 11, 7)
ICC_IAR1_EL1 = (3, 0, 12, 12, 0)
ICC_EOIR1_EL1 = (3, 0, 12, 12, 1)
ICC_HPPIR1_EL1 = (3, 0, 12, 12, 2)
ICC_BPR1_EL1 = (3, 0, 12, 12, 3)
ICC_CTLR_EL1 = (3, 0, 12, 12, 4)
ICC_SRE_EL1 = (3, 0, 12, 12, 5)
ICC_IGRPEN0_EL1 = (3, 0, 12, 12, 6)
ICC_IGRPEN1_EL1 = (3, 0, 12, 12, 7)

ICH_AP0R_EL2 = tuple((3, 4, 12, 8, n) for n in range(4))
ICH_AP1R_EL2 = tuple((3, 4, 12, 9, n) for n in range(4))
ICH_HCR_EL2 = (3, 4, 12, 11, 0)
ICH_VTR_EL2 = (3, 4, 12, 11, 1)
ICH_MISR_EL2 = (3, 4, 12, 11, 2)
ICH_EISR_EL2 = (3, 4, 12, 11, 3)
ICH_ELRSR_EL2 = (3, 4, 12, 11, 5)
ICH_VMCR_EL2 = (3, 4, 12, 11, 7)
ICH_LR_EL2 = tuple((3, 4, 12, 12 + n // 8, n % 8) for n in range(16))

# ICH_HCR_EL2
ICH_HCR_EN = 1 << 0
ICH_HCR_UIE = 1 << 1
ICH_HCR_LRENPIE = 1 << 2
ICH_HCR_NPIE = 1 << 3
ICH_HCR_VGRP0EIE = 1 << 4
ICH_HCR_VGRP0DIE = 1 << 5
ICH_HCR_VGRP1EIE = 1 << 6
ICH_HCR_VGRP1DIE = 1 << 7
ICH_HCR_TC = 1 << 10
ICH_HCR_TALL0 = 1 << 11
ICH_HCR_TALL1 = 1 << 12
ICH_HCR_TSEI = 1 << 13
ICH_HCR_TDIR = 1 << 14
ICH_HCR_EOICOUNT_SHIFT = 27
ICH_HCR_EOICOUNT = 0x1F << ICH_HCR_EOICOUNT_SHIFT
ICH_HCR_MASK = 0x7CFF | ICH_HCR_EOICOUNT

# ICH_MISR_EL2
ICH_MISR_EOI = 1 << 0
ICH_MISR_U = 1 << 1
ICH_MISR_LRENP = 1 << 2
ICH_MISR_NP = 1 << 3
ICH_MISR_VGRP0E = 1 << 4
ICH_MISR_VGRP0D = 1 << 5
ICH_MISR_VGRP1E = 1 << 6
ICH_MISR_VGRP1D = 1 << 7

# ICH_VMCR_EL2
ICH_VMCR_VENG0 = 1 << 0
ICH_VMCR_VENG1 = 1 << 1
ICH_VMCR_VACKCTL = 1 << 2
ICH_VMCR_VFIQEN = 1 << 3
ICH_VMCR_VCBPR = 1 << 4
ICH_VMCR_VEOIM = 1 << 9
ICH_VMCR_VBPR1_SHIFT = 18
ICH_VMCR_VBPR0_SHIFT = 21
ICH_VMCR_VPMR_SHIFT = 24
ICH_VMCR_MASK = (ICH_VMCR_VENG0 | ICH_VMCR_VENG1 | ICH_VMCR_VCBPR | ICH_VMCR_VEOIM | (7 << 18) | (7 << 21)
                 | (0xFF << 24))

# ICH_LR<n>_EL2
ICH_LR_VINTID = 0xFFFF_FFFF
ICH_LR_PINTID_SHIFT = 32
ICH_LR_PINTID = 0x1FFF << 32
ICH_LR_EOI = 1 << 41
ICH_LR_PRIORITY_SHIFT = 48
ICH_LR_GROUP = 1 << 60
ICH_LR_HW = 1 << 61
ICH_LR_STATE_SHIFT = 62
ICH_LR_PENDING = 1 << 62
ICH_LR_ACTIVE = 1 << 63
ICH_LR_STATE = 3 << 62
ICH_LR_MASK = 0xFFFF_FFFF_FFFF_FFFF & ~(7 << 45) & ~(0xF << 56)  # [47:45] and [59:56] RES0 (no NMI)

_TRAP_BITS = ICH_HCR_TC | ICH_HCR_TALL0 | ICH_HCR_TALL1 | ICH_HCR_TDIR
LIST_REGS = 4
PRI_BITS = 5
PRE_BITS = 5
# ICH_VTR_EL2: ListRegs [4:0], TDS [19], nV4 [20], A3V [21], IDbits [25:23] (1: 24 bits),
# PREbits [28:26] and PRIbits [31:29] (bits - 1).
ICH_VTR_VALUE = ((LIST_REGS - 1) | 1 << 19 | 1 << 20 | 1 << 21 | 1 << 23 | (PRE_BITS - 1) << 26
                 | (PRI_BITS - 1) << 29)
_PRI_MASK = (0xFF << (8 - PRI_BITS)) & 0xFF  # 0xF8: the priority bits implemented
_MIN_BPR = 7 - PRE_BITS  # 2: the lowest binary point (group 0)
INTID_SPURIOUS = 1023
INTID_MAX = 1 << 24
# ICC_CTLR_EL1 (as ICV_CTLR_EL1): CBPR [0], EOImode [1], PRIbits [10:8], IDbits [13:11] (1: 24
# bits), SEIS [14], A3V [15].
ICC_CTLR_CBPR = 1 << 0
ICC_CTLR_EOIMODE = 1 << 1
ICC_CTLR_RO = (PRI_BITS - 1) << 8 | 1 << 11 | 1 << 15
ICC_SRE_VALUE = 0b111  # SRE, DFB, DIB

G0, G1 = 0, 1


def special(intid: int) -> bool:
    """An INTID an LR cannot deliver: special (1020-1023), reserved (1024-8191) or too wide."""
    return 1020 <= intid < 8192 or intid >= INTID_MAX


class VirtualCpuInterface:
    """One vCPU's ICH_*_EL2 register file and the ICV_* behaviour the guest sees.

    ``hcr``, ``vmcr``, ``lr`` (list of 4), ``ap0r``/``ap1r`` (lists of 4) are the registers;
    :meth:`read` / :meth:`write` take the names (``"ICH_LR0_EL2"``, ``"ICH_MISR_EL2"`` ...).
    ``on_deactivate(pintid)`` is called when the guest deactivates an LR with HW = 1;
    ``on_maintenance()`` when the maintenance interrupt rises; ``on_sgi(value, group)`` for
    the guest's ICC_SGI*R_EL1 writes."""

    def __init__(self, vcpu) -> None:
        self.vcpu = vcpu
        self.hcr = 0
        self.vmcr = 0
        self.lr = [0] * LIST_REGS
        self.ap0r = [0] * 4
        self.ap1r = [0] * 4
        self.on_deactivate = lambda pintid: None
        self.on_maintenance = lambda: None
        self.on_sgi = lambda value, group: None
        self._event: Event | None = None  # the virtual IRQ/FIQ while signalled
        self._maintenance = False
        self.accesses = 0  # ICC_* accesses served without an exit
        # The LRs or ICH_* changed since the vGIC last folded and filled them (the guest's
        # acknowledge / EOI / deactivation, the hypervisor's writes): the next entry refills.
        self.lr_changed = False

    # -- the EL2 view ---------------------------------------------------------------------------
    def misr(self) -> int:
        hcr, vmcr, value = self.hcr, self.vmcr, 0
        valid = 0
        pending = False
        for lr in self.lr:
            state = lr & ICH_LR_STATE
            if state:
                valid += 1
                if state & ICH_LR_PENDING:
                    pending = True
            elif not lr & ICH_LR_HW and lr & ICH_LR_EOI:
                value |= ICH_MISR_EOI
        if hcr & ICH_HCR_LRENPIE and hcr & ICH_HCR_EOICOUNT:
            value |= ICH_MISR_LRENP
        if hcr & ICH_HCR_UIE and valid < 2:
            value |= ICH_MISR_U
        if hcr & ICH_HCR_NPIE and not pending:
            value |= ICH_MISR_NP
        for eie, die, eng, e, d in ((ICH_HCR_VGRP0EIE, ICH_HCR_VGRP0DIE, ICH_VMCR_VENG0, ICH_MISR_VGRP0E,
                                     ICH_MISR_VGRP0D),
                                    (ICH_HCR_VGRP1EIE, ICH_HCR_VGRP1DIE, ICH_VMCR_VENG1, ICH_MISR_VGRP1E,
                                     ICH_MISR_VGRP1D)):
            if hcr & eie and vmcr & eng:
                value |= e
            if hcr & die and not vmcr & eng:
                value |= d
        return value

    def eisr(self) -> int:
        return sum(1 << i for i, lr in enumerate(self.lr)
                   if not lr & ICH_LR_STATE and not lr & ICH_LR_HW and lr & ICH_LR_EOI)

    def elrsr(self) -> int:
        return sum(1 << i for i, lr in enumerate(self.lr)
                   if not lr & ICH_LR_STATE and (lr & ICH_LR_HW or not lr & ICH_LR_EOI))

    _NAMES = {"ICH_HCR_EL2", "ICH_VTR_EL2", "ICH_MISR_EL2", "ICH_EISR_EL2", "ICH_ELRSR_EL2", "ICH_VMCR_EL2"}

    def read(self, name: str) -> int:
        if name.startswith("ICH_LR"):
            return self.lr[self._index(name, 6)]
        if name.startswith("ICH_AP0R") or name.startswith("ICH_AP1R"):
            regs = self.ap0r if name[6] == "0" else self.ap1r
            return regs[self._index(name, 8)]
        return {"ICH_HCR_EL2": lambda: self.hcr, "ICH_VTR_EL2": lambda: ICH_VTR_VALUE,
                "ICH_MISR_EL2": self.misr, "ICH_EISR_EL2": self.eisr, "ICH_ELRSR_EL2": self.elrsr,
                "ICH_VMCR_EL2": lambda: self.vmcr}[name]()

    def write(self, name: str, value: int) -> None:
        """Program a register (read-only ones, VTR/MISR/EISR/ELRSR, ignore writes)."""
        self.lr_changed = True
        if name.startswith("ICH_LR"):
            self.lr[self._index(name, 6)] = value & ICH_LR_MASK
        elif name.startswith("ICH_AP0R") or name.startswith("ICH_AP1R"):
            regs = self.ap0r if name[6] == "0" else self.ap1r
            n = self._index(name, 8)
            regs[n] = value & 0xFFFF_FFFF if n == 0 else 0  # PREbits = 5: only AP<n>R0 exists
        elif name == "ICH_HCR_EL2":
            self.hcr = value & ICH_HCR_MASK
            self.vcpu.sysreg_traps.set_ich_hcr(self.hcr & _TRAP_BITS)
        elif name == "ICH_VMCR_EL2":
            self.vmcr = self._legal_vmcr(value & ICH_VMCR_MASK)
        elif name not in self._NAMES:
            raise KeyError(name)
        self.update()

    @staticmethod
    def _index(name: str, start: int) -> int:
        n = int(name[start:name.index("_", start)])
        if not 0 <= n < LIST_REGS:
            raise KeyError(name)
        return n

    @staticmethod
    def _legal_vmcr(vmcr: int) -> int:
        vmcr = (vmcr & ~(0xFF << ICH_VMCR_VPMR_SHIFT)) | ((vmcr >> ICH_VMCR_VPMR_SHIFT & _PRI_MASK) << ICH_VMCR_VPMR_SHIFT)
        bpr0 = max(vmcr >> ICH_VMCR_VBPR0_SHIFT & 7, _MIN_BPR)
        bpr1 = max(vmcr >> ICH_VMCR_VBPR1_SHIFT & 7, _MIN_BPR + 1)
        vmcr &= ~((7 << ICH_VMCR_VBPR0_SHIFT) | (7 << ICH_VMCR_VBPR1_SHIFT))
        return vmcr | bpr0 << ICH_VMCR_VBPR0_SHIFT | bpr1 << ICH_VMCR_VBPR1_SHIFT | ICH_VMCR_VFIQEN

    # -- priorities -----------------------------------------------------------------------------
    def _gprio_mask(self, group: int) -> int:
        vmcr = self.vmcr
        if group == G1 and not vmcr & ICH_VMCR_VCBPR:
            bpr = (vmcr >> ICH_VMCR_VBPR1_SHIFT & 7) - 1
        else:
            bpr = vmcr >> ICH_VMCR_VBPR0_SHIFT & 7
        return (0xFF << (bpr + 1)) & 0xFF

    def running_priority(self) -> int:
        """The highest active priority (ICC_RPR_EL1), 0xFF when idle."""
        bits = self.ap0r[0] | self.ap1r[0]
        if not bits:
            return 0xFF
        return ((bits & -bits).bit_length() - 1) << (_MIN_BPR + 1)

    def _hppvlr(self) -> int:
        """The highest-priority pending LR whose group is enabled, or -1."""
        best, best_prio = -1, 0x100
        vmcr = self.vmcr
        for i, lr in enumerate(self.lr):
            if lr & ICH_LR_STATE != ICH_LR_PENDING:
                continue
            if not vmcr & (ICH_VMCR_VENG1 if lr & ICH_LR_GROUP else ICH_VMCR_VENG0):
                continue
            prio = lr >> ICH_LR_PRIORITY_SHIFT & 0xFF
            if prio < best_prio:
                best, best_prio = i, prio
        return best

    def _can_preempt(self, lr: int) -> bool:
        prio = lr >> ICH_LR_PRIORITY_SHIFT & 0xFF
        if prio >= self.vmcr >> ICH_VMCR_VPMR_SHIFT:
            return False
        rprio = self.running_priority()
        if rprio == 0xFF:
            return True
        return (prio & self._gprio_mask(G1 if lr & ICH_LR_GROUP else G0)) < rprio

    # -- the outputs ----------------------------------------------------------------------------
    def update(self, stop: bool = True) -> None:
        """Recompute the virtual IRQ/FIQ and the maintenance interrupt (``stop``: a newly
        signalled interrupt ends the guest's current block so that it is taken)."""
        vcpu = self.vcpu
        event = None
        if self.hcr & ICH_HCR_EN:
            idx = self._hppvlr()
            if idx >= 0 and self._can_preempt(self.lr[idx]) and not special(self.lr[idx] & ICH_LR_VINTID):
                lr = self.lr[idx]
                etype = EventType.VIRTUAL_IRQ if lr & ICH_LR_GROUP else EventType.VIRTUAL_FIQ
                event = (etype, lr & ICH_LR_VINTID)
        old = self._event
        if old is not None and (event is None or (old.type, old.vector) != event):
            for i, e in enumerate(vcpu.events):
                if e is old:
                    del vcpu.events[i]
                    break
            self._event = old = None
        if event is not None and old is None:
            self._event = Event(event[0], vector=event[1])
            vcpu.events.append(self._event)
            if stop:
                vcpu.deliver_pending_in_engine()
        maintenance = bool(self.hcr & ICH_HCR_EN) and self.misr() != 0
        if maintenance and not self._maintenance:
            self._maintenance = True
            self.on_maintenance()
        elif not maintenance:
            self._maintenance = False

    def taken(self, event: Event) -> None:
        """The guest took the virtual IRQ/FIQ: the signal stays while the LR stays pending
        (a level, as the hardware's), and is taken again once unmasked unless acknowledged."""
        if event is self._event:
            self._event = None
            self.update(stop=False)

    def reset_line(self) -> None:
        """The vCPU's event queue was cleared (PSCI CPU_ON): signal again from scratch."""
        self._event = None
        self.update(stop=False)

    # -- ICV_* as the guest's ICC_* accesses ----------------------------------------------------
    def iar(self, group: int) -> int:
        self.accesses += 1
        idx = self._hppvlr()
        if idx < 0:
            return INTID_SPURIOUS
        lr = self.lr[idx]
        if (G1 if lr & ICH_LR_GROUP else G0) != group or not self._can_preempt(lr):
            return INTID_SPURIOUS
        intid = lr & ICH_LR_VINTID
        if special(intid):
            return INTID_SPURIOUS
        prio = (lr >> ICH_LR_PRIORITY_SHIFT & 0xFF) & self._gprio_mask(group)
        bit = prio >> (8 - PRE_BITS)
        (self.ap1r if group == G1 else self.ap0r)[bit // 32] |= 1 << (bit % 32)
        self.lr[idx] = (lr & ~ICH_LR_PENDING) | ICH_LR_ACTIVE
        self.lr_changed = True
        self.update()
        return intid

    def hppir(self, group: int) -> int:
        self.accesses += 1
        idx = self._hppvlr()
        if idx < 0:
            return INTID_SPURIOUS
        lr = self.lr[idx]
        if (G1 if lr & ICH_LR_GROUP else G0) != group or special(lr & ICH_LR_VINTID):
            return INTID_SPURIOUS
        return lr & ICH_LR_VINTID

    def _drop_priority(self) -> int:
        """Clear the highest active priority bit (AP0R before AP1R at equal priority)."""
        best = None
        for regs in (self.ap0r, self.ap1r):
            bits = regs[0]
            if bits:
                low = (bits & -bits).bit_length() - 1
                if best is None or low < best[1]:
                    best = (regs, low)
        if best is None:
            return 0xFF
        regs, low = best
        regs[0] &= ~(1 << low)
        return low << (_MIN_BPR + 1)

    def _find_active(self, intid: int) -> int:
        for i, lr in enumerate(self.lr):
            if lr & ICH_LR_ACTIVE and lr & ICH_LR_VINTID == intid:
                return i
        return -1

    def _eoicount(self) -> None:
        self.lr_changed = True
        count = (self.hcr >> ICH_HCR_EOICOUNT_SHIFT) + 1
        if count < 32:  # saturates at its 5-bit maximum
            self.hcr = (self.hcr & ~ICH_HCR_EOICOUNT) | count << ICH_HCR_EOICOUNT_SHIFT

    def _deactivate(self, idx: int) -> None:
        lr = self.lr[idx]
        self.lr[idx] = lr & ~ICH_LR_ACTIVE  # active+pending -> pending, active -> invalid
        self.lr_changed = True
        if lr & ICH_LR_HW:
            self.on_deactivate(lr >> ICH_LR_PINTID_SHIFT & 0x1FFF)

    def eoir(self, value: int, group: int) -> None:
        self.accesses += 1
        intid = value & 0xFF_FFFF
        if intid >= 1020 and intid < 8192:
            return  # special INTIDs: no effect
        drop = self._drop_priority()
        if drop == 0xFF:
            self.update()  # CONSTRAINED UNPREDICTABLE: the LRs are not checked (as QEMU)
            return
        idx = self._find_active(intid)
        if idx < 0:
            self._eoicount()
        else:
            lr = self.lr[idx]
            lr_group = G1 if lr & ICH_LR_GROUP else G0
            if lr_group == group and (lr >> ICH_LR_PRIORITY_SHIFT & 0xFF) & self._gprio_mask(group) == drop \
                    and not self.vmcr & ICH_VMCR_VEOIM:
                self._deactivate(idx)
        self.update()

    def dir(self, value: int) -> None:
        self.accesses += 1
        intid = value & 0xFF_FFFF
        if (1020 <= intid < 8192) or not self.vmcr & ICH_VMCR_VEOIM:
            return
        idx = self._find_active(intid)
        if idx < 0:
            self._eoicount()
        else:
            self._deactivate(idx)
        self.update()

    def _set_vmcr(self, value: int) -> None:
        self.vmcr = self._legal_vmcr(value)
        self.update()

    def _field(self, shift: int, width: int):
        mask = (1 << width) - 1

        def read() -> int:
            self.accesses += 1
            return self.vmcr >> shift & mask

        def write(value: int) -> None:
            self.accesses += 1
            self._set_vmcr((self.vmcr & ~(mask << shift)) | (value & mask) << shift)

        return read, write

    def read_ctlr(self) -> int:
        self.accesses += 1
        v = self.vmcr
        return (ICC_CTLR_CBPR if v & ICH_VMCR_VCBPR else 0) | (ICC_CTLR_EOIMODE if v & ICH_VMCR_VEOIM else 0) \
            | ICC_CTLR_RO

    def write_ctlr(self, value: int) -> None:
        self.accesses += 1
        v = self.vmcr & ~(ICH_VMCR_VCBPR | ICH_VMCR_VEOIM)
        v |= (ICH_VMCR_VCBPR if value & ICC_CTLR_CBPR else 0) | (ICH_VMCR_VEOIM if value & ICC_CTLR_EOIMODE else 0)
        self._set_vmcr(v)

    def read_rpr(self) -> int:
        self.accesses += 1
        return self.running_priority()

    def install(self, traps) -> None:
        """Serve the guest's ICC_* MRS/MSR (hooked where they are, no exit)."""
        emu = traps.emulate_unimplemented
        pmr = self._field(ICH_VMCR_VPMR_SHIFT, 8)
        emu(ICC_PMR_EL1, pmr[0], pmr[1])
        emu(ICC_IAR1_EL1, lambda: self.iar(G1))
        emu(ICC_IAR0_EL1, lambda: self.iar(G0))
        emu(ICC_EOIR1_EL1, write=lambda v: self.eoir(v, G1))
        emu(ICC_EOIR0_EL1, write=lambda v: self.eoir(v, G0))
        emu(ICC_HPPIR1_EL1, lambda: self.hppir(G1))
        emu(ICC_HPPIR0_EL1, lambda: self.hppir(G0))
        emu(ICC_DIR_EL1, write=self.dir)
        emu(ICC_RPR_EL1, self.read_rpr)
        bpr1 = self._field(ICH_VMCR_VBPR1_SHIFT, 3)
        bpr0 = self._field(ICH_VMCR_VBPR0_SHIFT, 3)
        emu(ICC_BPR1_EL1, *bpr1)
        emu(ICC_BPR0_EL1, *bpr0)
        emu(ICC_IGRPEN1_EL1, *self._field(1, 1))
        emu(ICC_IGRPEN0_EL1, *self._field(0, 1))
        emu(ICC_CTLR_EL1, self.read_ctlr, self.write_ctlr)
        emu(ICC_SRE_EL1, lambda: ICC_SRE_VALUE, lambda v: None)
        for n in range(4):
            emu(ICC_AP1R_EL1[n], (lambda n=n: self.ap1r[n]), (lambda v, n=n: self._write_apr(self.ap1r, n, v)))
            emu(ICC_AP0R_EL1[n], (lambda n=n: self.ap0r[n]), (lambda v, n=n: self._write_apr(self.ap0r, n, v)))
        emu(ICC_SGI1R_EL1, write=lambda v: self.on_sgi(v, G1))
        emu(ICC_ASGI1R_EL1, write=lambda v: self.on_sgi(v, G0))  # the other group: group 0 here (DS = 1)
        emu(ICC_SGI0R_EL1, write=lambda v: self.on_sgi(v, G0))

    def _write_apr(self, regs: list, n: int, value: int) -> None:
        regs[n] = value & 0xFFFF_FFFF if n == 0 else 0
        self.lr_changed = True
        self.update()
