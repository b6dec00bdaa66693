"""The EL2 register file the hypervisor programs for each vCPU (Arm ARM DDI 0487, D23.2).

HCR_EL2, CPTR_EL2, MDCR_EL2, HSTR_EL2, CNTHCTL_EL2, CNTVOFF_EL2, VTTBR_EL2, VTCR_EL2,
VBAR_EL2, VPIDR_EL2, VMPIDR_EL2 and the trap record ESR_EL2, FAR_EL2, HPFAR_EL2, ELR_EL2,
SPSR_EL2 (:class:`El2Regs`, ``vcpu.el2``), with the bit names of the Arm ARM (Linux's
``HCR_*`` / ``MDCR_EL2_*`` / ``CNTHCTL_*`` macros in arch/arm64/include/asm/kvm_arm.h are the
same bits). hvsim models an ARMv8.0 CPU (the engine's Cortex-A72) with HCR_EL2.E2H = 0: the
RES0/RES1 masks are the ones that CPU has.

hvsim is the hypervisor, so these registers are Python state, not the engine's own EL2
registers: the engine keeps HCR_EL2.RW (EL1 is AArch64) and the registers EL1 reads through
(VPIDR_EL2, VMPIDR_EL2, CNTVOFF_EL2), because QEMU acting on VM, IMO, TSC ... would take the
guest to an EL2 that has no code. hvsim enforces the trap controls itself (:mod:`.traps`). A
write is effective at the next entry into the guest, as on hardware where the hypervisor's
ERET follows it; written from an exit handler while the guest is inside the engine, the guest
is re-entered before it runs on (the engine stops at the end of the current translation block).

The value each vCPU starts with is what KVM programs for a 64-bit guest (``vcpu_reset_hcr``):
``HCR_GUEST_FLAGS`` (Linux 6.x: TSC TSW TWE TWI VM BSU_IS FB TACR AMO SWIO TIDCP RW TLOR FMO
IMO PTW TID3 TID1), plus FWB (hvsim plays a host with FEAT_S2FWB, so KVM does not add TVM to
watch the guest's MMU coming on), plus TID2 (no FEAT_EVT, so not TID4). KVM then clears TWE
and keeps TWI at each vcpu_load when the vCPU thread runs alone on its CPU
(``vcpu_clear_wfx_traps``, the default ``kvm-arm.wfe_trap_policy``): WFI exits, WFE does not.
MDCR_EL2 starts as ``kvm_arm_setup_mdcr_el2`` leaves it for a guest nobody debugs (all PMU
counters to the guest, PMU, debug, OS-lock and debug-ROM registers trapped), CNTHCTL_EL2 as
nVHE KVM's ``__timer_enable_traps`` (physical counter to the guest, physical timer trapped),
CPTR_EL2 with nothing trapped. The trapped accesses cost nothing on the guest's other
MRS/MSR: only the trapped instructions are hooked, found when their code is translated
(:mod:`.traps`), so an untrapped MRS/MSR runs natively.

Not modelled, and said so by ``hvsim spec --arch arm_el2 hcr|sysregs``: HSTR_EL2 and TID0 trap
AArch32 accesses only (hvsim's guests are AArch64 at EL1 and EL0); TGE (with E2H = 0 an ERET
to EL1 is then an illegal exception return: the entry fails); MDCR_EL2.TDE and HPMN are kept
(no debug exceptions, no PMU partitioning); VTTBR_EL2/VTCR_EL2 are kept for the stage-2 work.
"""

from __future__ import annotations

# HCR_EL2 fields (D23.2). Bits 39 and 48 are RES0 (Linux HCR_RES0).
HCR_VM = 1 << 0
HCR_SWIO = 1 << 1
HCR_PTW = 1 << 2
HCR_FMO = 1 << 3
HCR_IMO = 1 << 4
HCR_AMO = 1 << 5
HCR_VF = 1 << 6
HCR_VI = 1 << 7
HCR_VSE = 1 << 8
HCR_FB = 1 << 9
HCR_BSU = 0x3 << 10
HCR_DC = 1 << 12
HCR_TWI = 1 << 13
HCR_TWE = 1 << 14
HCR_TID0 = 1 << 15
HCR_TID1 = 1 << 16
HCR_TID2 = 1 << 17
HCR_TID3 = 1 << 18
HCR_TSC = 1 << 19
HCR_TIDCP = 1 << 20
HCR_TACR = 1 << 21
HCR_TSW = 1 << 22
HCR_TPCP = 1 << 23
HCR_TPU = 1 << 24
HCR_TTLB = 1 << 25
HCR_TVM = 1 << 26
HCR_TGE = 1 << 27
HCR_TDZ = 1 << 28
HCR_HCD = 1 << 29
HCR_TRVM = 1 << 30
HCR_RW = 1 << 31
HCR_CD = 1 << 32
HCR_ID = 1 << 33
HCR_E2H = 1 << 34
HCR_TLOR = 1 << 35
HCR_TERR = 1 << 36
HCR_TEA = 1 << 37
HCR_MIOCNCE = 1 << 38
HCR_APK = 1 << 40
HCR_API = 1 << 41
HCR_NV = 1 << 42
HCR_NV1 = 1 << 43
HCR_AT = 1 << 44
HCR_NV2 = 1 << 45
HCR_FWB = 1 << 46
HCR_FIEN = 1 << 47
HCR_TID4 = 1 << 49
HCR_TICAB = 1 << 50
HCR_AMVOFFEN = 1 << 51
HCR_TOCU = 1 << 52
HCR_EnSCXT = 1 << 53
HCR_TTLBIS = 1 << 54
HCR_TTLBOS = 1 << 55
HCR_ATA = 1 << 56
HCR_DCT = 1 << 57
HCR_TID5 = 1 << 58
HCR_TWEDEn = 1 << 59
HCR_TWEDEL = 0xf << 60
HCR_BSU_IS = 1 << 10
HCR_TPC = HCR_TPCP  # Linux's name

# (name, field mask, meaning) in bit order, for `hvsim spec --arch arm_el2 hcr`.
HCR_FIELDS = [
    ("VM", HCR_VM, "stage-2 translation for EL1&0 enabled"),
    ("SWIO", HCR_SWIO, "set/way invalidate by EL1 becomes clean+invalidate"),
    ("PTW", HCR_PTW, "stage-1 walk hitting stage-2 Device memory: stage-2 fault"),
    ("FMO", HCR_FMO, "physical FIQs to EL2; virtual FIQ (VF) enabled"),
    ("IMO", HCR_IMO, "physical IRQs to EL2; virtual IRQ (VI) enabled"),
    ("AMO", HCR_AMO, "physical SErrors to EL2; virtual SError (VSE) enabled"),
    ("VF", HCR_VF, "virtual FIQ pending"),
    ("VI", HCR_VI, "virtual IRQ pending"),
    ("VSE", HCR_VSE, "virtual SError pending"),
    ("FB", HCR_FB, "force broadcast of TLB and I-cache maintenance"),
    ("BSU", HCR_BSU, "barrier shareability upgrade (1 = inner shareable)"),
    ("DC", HCR_DC, "default cacheability: EL1&0 stage 1 off acts as Normal WB"),
    ("TWI", HCR_TWI, "trap WFI (EC 0x01, TI 0b00)"),
    ("TWE", HCR_TWE, "trap WFE (EC 0x01, TI 0b01)"),
    ("TID0", HCR_TID0, "trap ID group 0 (AArch32 FPSID, JIDR)"),
    ("TID1", HCR_TID1, "trap ID group 1 reads: REVIDR_EL1, AIDR_EL1 (EC 0x18)"),
    ("TID2", HCR_TID2, "trap ID group 2: CTR_EL0, CCSIDR_EL1, CLIDR_EL1, CSSELR_EL1 (EC 0x18)"),
    ("TID3", HCR_TID3, "trap ID group 3 reads: ID_AA64*_EL1, ID_*_EL1, MVFR*_EL1 (EC 0x18)"),
    ("TSC", HCR_TSC, "trap SMC (EC 0x17)"),
    ("TIDCP", HCR_TIDCP, "trap IMPLEMENTATION DEFINED system registers"),
    ("TACR", HCR_TACR, "trap ACTLR_EL1 accesses (EC 0x18)"),
    ("TSW", HCR_TSW, "trap DC ISW/CSW/CISW (set/way)"),
    ("TPCP", HCR_TPCP, "trap DC to point of coherency/persistence (TPC)"),
    ("TPU", HCR_TPU, "trap IC / DC to point of unification"),
    ("TTLB", HCR_TTLB, "trap TLBI instructions"),
    ("TVM", HCR_TVM, "trap writes of the EL1 virtual-memory control registers (EC 0x18)"),
    ("TGE", HCR_TGE, "trap general exceptions from EL0 to EL2"),
    ("TDZ", HCR_TDZ, "trap DC ZVA"),
    ("HCD", HCR_HCD, "HVC disabled (with EL3: RES0)"),
    ("TRVM", HCR_TRVM, "trap reads of the EL1 virtual-memory control registers (EC 0x18)"),
    ("RW", HCR_RW, "EL1 is AArch64"),
    ("CD", HCR_CD, "stage-2 data accesses non-cacheable"),
    ("ID", HCR_ID, "stage-2 instruction fetches non-cacheable"),
    ("E2H", HCR_E2H, "EL2 host (VHE)"),
    ("TLOR", HCR_TLOR, "trap LORegion registers"),
    ("TERR", HCR_TERR, "trap error record accesses"),
    ("TEA", HCR_TEA, "route synchronous external aborts to EL2"),
    ("MIOCNCE", HCR_MIOCNCE, "mismatched inner/outer cacheable non-coherency enable"),
    ("APK", HCR_APK, "do not trap pointer-authentication key registers"),
    ("API", HCR_API, "do not trap pointer-authentication instructions"),
    ("NV", HCR_NV, "nested virtualization"),
    ("NV1", HCR_NV1, "nested virtualization (EL1 registers)"),
    ("AT", HCR_AT, "trap AT S1E0*/S1E1*"),
    ("NV2", HCR_NV2, "nested virtualization: EL2 registers to memory"),
    ("FWB", HCR_FWB, "stage 2 forced write-back"),
    ("FIEN", HCR_FIEN, "fault injection enable"),
    ("TID4", HCR_TID4, "trap ID group 4 (cache ID registers)"),
    ("TICAB", HCR_TICAB, "trap IC IALLUIS"),
    ("AMVOFFEN", HCR_AMVOFFEN, "activity monitors virtual offsets enable"),
    ("TOCU", HCR_TOCU, "trap cache maintenance to point of unification"),
    ("EnSCXT", HCR_EnSCXT, "SCXTNUM_ELx accessible"),
    ("TTLBIS", HCR_TTLBIS, "trap inner shareable TLBI"),
    ("TTLBOS", HCR_TTLBOS, "trap outer shareable TLBI"),
    ("ATA", HCR_ATA, "allocation tag access (MTE)"),
    ("DCT", HCR_DCT, "default cacheability tagging"),
    ("TID5", HCR_TID5, "trap GMID_EL1"),
    ("TWEDEn", HCR_TWEDEn, "WFE trap delay enable"),
    ("TWEDEL", HCR_TWEDEL, "WFE trap delay"),
]
HCR_RES0 = (1 << 48) | (1 << 39)

# The bits hvsim acts on (the others are kept, read back, and shown with `hvsim spec hcr`).
HCR_MODELLED = {"VI", "VF", "VSE", "TWI", "TWE", "TSC", "TVM", "TRVM", "TID1", "TID2", "TID3", "TACR", "TIDCP", "TSW",
                "TPCP", "TPU", "TTLB", "TDZ", "TGE", "RW"}

HCR_EL2_RESET = 0  # the Arm ARM leaves most fields UNKNOWN on a warm reset; hvsim uses 0

HCR_GUEST_FLAGS = (HCR_TSC | HCR_TSW | HCR_TWE | HCR_TWI | HCR_VM | HCR_BSU_IS
                   | HCR_FB | HCR_TACR | HCR_AMO | HCR_SWIO | HCR_TIDCP | HCR_RW
                   | HCR_TLOR | HCR_FMO | HCR_IMO | HCR_PTW | HCR_TID3 | HCR_TID1)
# What hvsim programs before a vCPU's first entry (see the module docstring).
HCR_EL2_DEFAULT = (HCR_GUEST_FLAGS | HCR_FWB | HCR_TID2) & ~HCR_TWE

# CPTR_EL2 with HCR_EL2.E2H == 0 (D23.2 "CPTR_EL2"): RES1 bits 13, 12 (no SME), 9, 7:0.
CPTR_EL2_TFP = 1 << 10  # trap FP / Advanced SIMD (EC 0x07)
CPTR_EL2_TZ = 1 << 8
# TTA traps the System-register interface of the trace unit (op0 2, op1 1): the engine's CPU
# implements none (MRS TRCPRGCTLR is UNDEFINED, measured), so TTA is kept with nothing to trap;
# TAM is RES0 as the CPU has no activity monitors (ID_AA64PFR0_EL1.AMU [47:44] reads 0).
CPTR_EL2_TTA = 1 << 20
CPTR_EL2_TAM = 1 << 30
CPTR_EL2_TCPAC = 1 << 31
CPTR_EL2_RES1 = 0x32FF
CPTR_EL2_RES0 = ~(CPTR_EL2_RES1 | CPTR_EL2_TFP | CPTR_EL2_TZ | CPTR_EL2_TTA
                  | CPTR_EL2_TCPAC) & 0xFFFF_FFFF_FFFF_FFFF
CPTR_EL2_DEFAULT = CPTR_EL2_RES1  # KVM traps nothing by default for a guest that may use FP

# MDCR_EL2 (D23.2 "MDCR_EL2", ARMv8.0 fields; bits 63:12 RES0 without SPE/TRF/PMUv3p5).
MDCR_EL2_HPMN = 0x1F  # event counters EL1/EL0 may use
MDCR_EL2_TPMCR = 1 << 5  # trap PMCR_EL0
MDCR_EL2_TPM = 1 << 6  # trap the PMU registers
MDCR_EL2_HPME = 1 << 7
MDCR_EL2_TDE = 1 << 8  # route debug exceptions to EL2 (not modelled: hvsim has no debug exceptions)
MDCR_EL2_TDA = 1 << 9  # trap debug register accesses (MDSCR_EL1, DBGB*/DBGW*, ...)
MDCR_EL2_TDOSA = 1 << 10  # trap the OS-lock registers (OSLAR/OSLSR/OSDLR_EL1, DBGPRCR_EL1)
MDCR_EL2_TDRA = 1 << 11  # trap the debug ROM registers (MDRAR_EL1)
MDCR_EL2_RES0 = ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF
PMCR_EL0_N = 4  # event counters of the engine's CPU (its PMCR_EL0 reads 0x41002040: N = 4)
# KVM's kvm_arm_setup_mdcr_el2() for a guest not being debugged: all counters, PMU, debug and
# OS-lock and debug-ROM registers trapped (KVM emulates them lazily).
MDCR_EL2_DEFAULT = (PMCR_EL0_N | MDCR_EL2_TPM | MDCR_EL2_TPMCR | MDCR_EL2_TDRA | MDCR_EL2_TDOSA
                    | MDCR_EL2_TDA)

# CNTHCTL_EL2 with E2H == 0 (D23.2 "CNTHCTL_EL2", ARMv8.0 fields).
CNTHCTL_EL1PCTEN = 1 << 0  # EL1/EL0 may read CNTPCT_EL0 (clear: the read traps, EC 0x18)
CNTHCTL_EL1PCEN = 1 << 1  # EL1/EL0 may use CNTP_CTL/CVAL/TVAL_EL0 (clear: they trap)
CNTHCTL_EVNTEN = 1 << 2
CNTHCTL_EVNTDIR = 1 << 3
CNTHCTL_EVNTI = 0xF << 4
CNTHCTL_EL2_RES0 = ~0xFF & 0xFFFF_FFFF_FFFF_FFFF
# KVM (nVHE, __timer_enable_traps): the physical counter is the guest's, the physical timer
# is emulated (its registers trap).
CNTHCTL_EL2_DEFAULT = CNTHCTL_EL1PCTEN

# HSTR_EL2 (D23.2): T<n> traps AArch32 EL1/EL0 accesses to the CP15 registers with primary
# CRn = n. hvsim guests are AArch64 at EL1 and EL0 (HCR_EL2.RW is 1), so it holds values only.
HSTR_EL2_RES0 = ~0xBFEF & 0xFFFF_FFFF_FFFF_FFFF  # T4, T14 and bits 63:16 RES0

# VTCR_EL2 (D23.2, ARMv8.0 fields T0SZ SL0 IRGN0 ORGN0 SH0 TG0 PS): bit 31 RES1.
VTCR_EL2_RES1 = 1 << 31
VTCR_EL2_RES0 = ~(0x7_FFFF | VTCR_EL2_RES1) & 0xFFFF_FFFF_FFFF_FFFF
# VTTBR_EL2: BADDR [47:1], VMID [55:48] (8-bit VMIDs, no FEAT_VMID16), CnP [0].
VTTBR_EL2_RES0 = 0xFF00_0000_0000_0000
VBAR_EL2_RES0 = 0x7FF  # the vector table is 2 KiB aligned
# VPIDR_EL2 / VMPIDR_EL2 (D23.2): what the guest's MIDR_EL1 / MPIDR_EL1 read at EL1.
VPIDR_EL2_RES0 = 0xFFFF_FFFF_0000_0000
VMPIDR_EL2_RES1 = 1 << 31
VMPIDR_EL2_RES0 = 0xFFFF_FF00_3E00_0000  # bits 63:40 and 29:25
HPFAR_EL2_RES0 = ~(((1 << 44) - 1) & ~0xF) & 0xFFFF_FFFF_FFFF_FFFF  # FIPA [43:4]
# SPSR_EL2 from AArch64 (ARMv8.0): NZCV [31:28], SS [21], IL [20], DAIF [9:6], M [4:0].
SPSR_EL2_RES0 = 0xFFFF_FFFF_0FC0_FC20
ESR_EL2_RES0 = 0xFFFF_FFFF_0000_0000  # no ISS2 (FEAT_LS64 etc.)

_MASK64 = (1 << 64) - 1

# name: (encoding, RES0, RES1, reset value or None = set per vCPU). Encodings (op0, op1, CRn,
# CRm, op2) as the Arm ARM's "Accessing" sections give them. The reset values are what hvsim
# programs before the first entry: architecturally most EL2 fields reset to UNKNOWN, hvsim
# picks KVM's values (HCR_EL2, MDCR_EL2, CNTHCTL_EL2, CPTR_EL2) or 0.
REGISTERS: dict[str, tuple[tuple[int, int, int, int, int], int, int, int | None]] = {
    "HCR_EL2": ((3, 4, 1, 1, 0), HCR_RES0, 0, HCR_EL2_DEFAULT),
    "CPTR_EL2": ((3, 4, 1, 1, 2), CPTR_EL2_RES0, CPTR_EL2_RES1, CPTR_EL2_DEFAULT),
    "MDCR_EL2": ((3, 4, 1, 1, 1), MDCR_EL2_RES0, 0, MDCR_EL2_DEFAULT),
    "HSTR_EL2": ((3, 4, 1, 1, 3), HSTR_EL2_RES0, 0, 0),
    "VTTBR_EL2": ((3, 4, 2, 1, 0), VTTBR_EL2_RES0, 0, 0),
    "VTCR_EL2": ((3, 4, 2, 1, 2), VTCR_EL2_RES0, VTCR_EL2_RES1, VTCR_EL2_RES1),
    "VBAR_EL2": ((3, 4, 12, 0, 0), VBAR_EL2_RES0, 0, 0),
    "VPIDR_EL2": ((3, 4, 0, 0, 0), VPIDR_EL2_RES0, 0, None),
    "VMPIDR_EL2": ((3, 4, 0, 0, 5), VMPIDR_EL2_RES0, VMPIDR_EL2_RES1, None),
    "CNTHCTL_EL2": ((3, 4, 14, 1, 0), CNTHCTL_EL2_RES0, 0, CNTHCTL_EL2_DEFAULT),
    "CNTVOFF_EL2": ((3, 4, 14, 0, 3), 0, 0, 0),
    "ESR_EL2": ((3, 4, 5, 2, 0), ESR_EL2_RES0, 0, 0),
    "FAR_EL2": ((3, 4, 6, 0, 0), 0, 0, 0),
    "HPFAR_EL2": ((3, 4, 6, 0, 4), HPFAR_EL2_RES0, 0, 0),
    "ELR_EL2": ((3, 4, 4, 0, 1), 0, 0, 0),
    "SPSR_EL2": ((3, 4, 4, 0, 0), SPSR_EL2_RES0, 0, 0),
}


def hcr_names(value: int) -> list[str]:
    """The HCR_EL2 fields set in ``value``, by name (multi-bit fields as NAME=n)."""
    names = []
    for name, mask, _ in HCR_FIELDS:
        field = (value & mask) >> ((mask & -mask).bit_length() - 1)
        if field:
            names.append(name if mask & (mask - 1) == 0 else f"{name}={field}")
    return names


def _control(name: str):
    """A trap-control register: RES0/RES1 enforced on write, ``on_change`` called after it."""
    _enc, res0, res1, _reset = REGISTERS[name]
    slot = "_" + name

    def get(self) -> int:
        return getattr(self, slot)

    def set_(self, value: int) -> None:
        setattr(self, slot, ((value & _MASK64) & ~res0) | res1)
        if self.on_change is not None:
            self.on_change(name)

    return property(get, set_, doc=f"{name}; RES0 bits read as 0, RES1 bits as 1")


class El2Regs:
    """One vCPU's EL2 registers as its hypervisor programs them (Arm ARM D23.2), by their
    Arm ARM names: ``HCR_EL2``, ``VTTBR_EL2`` ... (``hcr`` and ``cptr`` are short names).

    Every write keeps the register's RES0 bits 0 and RES1 bits 1. Writes of the trap controls
    (HCR_EL2, CPTR_EL2, MDCR_EL2, CNTHCTL_EL2) and of VPIDR_EL2 / VMPIDR_EL2 / CNTVOFF_EL2
    call ``on_change(name)``: the vCPU makes them reach the guest at its next entry (the
    hypervisor's ERET). The trap record, ESR_EL2 / FAR_EL2 / HPFAR_EL2 (``record``, an
    :class:`.exits.El2Record`) and ELR_EL2 / SPSR_EL2 (the trapping instruction's address as
    the Arm ARM gives the preferred return, and the guest's PSTATE then), is written by the
    vCPU on every trap, before the exit handler runs. After the handler hvsim completes the
    trapped instruction as KVM would (an HVC or WFE continues after it, an emulated MRS/MSR is
    performed, a stage-2 abort is retried); a handler that writes ELR_EL2 or SPSR_EL2 sets up
    the hypervisor's ERET instead: the guest resumes at ELR_EL2 with PSTATE = SPSR_EL2 (to
    skip an aborting instruction, ``el2.ELR_EL2 += 4``). For HVC, SMC, WFI, WFE, FP/SIMD, AT
    and stage-2 aborts; a SYSREG (MRS/MSR/SYS) handler's write ends the run with one line, as
    its hook runs inside a translated block that would go on regardless; MMIO exits complete
    the access inside the engine.

    The guest's EL1 system registers (SCTLR_EL1, TTBR0_EL1, VBAR_EL1 ...) are not here: they
    live in the vCPU's engine (``vcpu.sysregs``), which only the guest and trapped-access
    emulation touch, so the guest and hypervisor contexts never mix; each vCPU has its own."""

    __slots__ = ("_HCR_EL2", "_CPTR_EL2", "_MDCR_EL2", "_CNTHCTL_EL2", "_HSTR_EL2", "_VTTBR_EL2",
                 "_VTCR_EL2", "_VBAR_EL2", "_VPIDR_EL2", "_VMPIDR_EL2", "_CNTVOFF_EL2",
                 "record", "_ELR_EL2", "_SPSR_EL2", "on_change")

    def __init__(self, on_change=None, *, vpidr: int = 0, vmpidr: int = VMPIDR_EL2_RES1) -> None:
        from .exits import El2Record

        self.on_change = None
        for name, (_enc, res0, res1, reset) in REGISTERS.items():
            if "_" + name in self.__slots__:
                setattr(self, "_" + name, reset if reset is not None else 0)
        self._VPIDR_EL2 = vpidr & ~VPIDR_EL2_RES0
        self._VMPIDR_EL2 = (vmpidr & ~VMPIDR_EL2_RES0) | VMPIDR_EL2_RES1
        self.record = El2Record(0)
        self._ELR_EL2 = 0
        self._SPSR_EL2 = 0
        self.on_change = on_change

    HCR_EL2 = _control("HCR_EL2")
    CPTR_EL2 = _control("CPTR_EL2")
    MDCR_EL2 = _control("MDCR_EL2")
    CNTHCTL_EL2 = _control("CNTHCTL_EL2")
    HSTR_EL2 = _control("HSTR_EL2")
    VTTBR_EL2 = _control("VTTBR_EL2")
    VTCR_EL2 = _control("VTCR_EL2")
    VBAR_EL2 = _control("VBAR_EL2")
    VPIDR_EL2 = _control("VPIDR_EL2")
    VMPIDR_EL2 = _control("VMPIDR_EL2")
    CNTVOFF_EL2 = _control("CNTVOFF_EL2")
    ELR_EL2 = _control("ELR_EL2")  # the vCPU writes _ELR_EL2 / _SPSR_EL2 on a trap
    SPSR_EL2 = _control("SPSR_EL2")
    hcr = HCR_EL2
    cptr = CPTR_EL2

    # -- the trap record ------------------------------------------------------------------
    @property
    def ESR_EL2(self) -> int:  # noqa: N802 (the Arm ARM's names)
        return self.record.ESR_EL2

    @ESR_EL2.setter
    def ESR_EL2(self, value: int) -> None:  # noqa: N802
        from .exits import El2Record

        r = self.record
        self.record = El2Record(value & ~ESR_EL2_RES0 & _MASK64, r.FAR_EL2, r.HPFAR_EL2)

    @property
    def FAR_EL2(self) -> int:  # noqa: N802
        return self.record.FAR_EL2

    @FAR_EL2.setter
    def FAR_EL2(self, value: int) -> None:  # noqa: N802
        from .exits import El2Record

        r = self.record
        self.record = El2Record(r.ESR_EL2, value & _MASK64, r.HPFAR_EL2)

    @property
    def HPFAR_EL2(self) -> int:  # noqa: N802
        return self.record.HPFAR_EL2

    @HPFAR_EL2.setter
    def HPFAR_EL2(self, value: int) -> None:  # noqa: N802
        from .exits import El2Record

        r = self.record
        self.record = El2Record(r.ESR_EL2, r.FAR_EL2, value & ~HPFAR_EL2_RES0 & _MASK64)

    def read(self, name: str) -> int:
        """A register by its Arm ARM name (``el2.read("VTCR_EL2")``)."""
        if name not in REGISTERS:
            raise KeyError(f"{name} is not an EL2 register hvsim models ({', '.join(REGISTERS)})")
        return getattr(self, name)

    def write(self, name: str, value: int) -> None:
        if name not in REGISTERS:
            raise KeyError(f"{name} is not an EL2 register hvsim models ({', '.join(REGISTERS)})")
        setattr(self, name, value)

    def __repr__(self) -> str:
        return (f"El2Regs(HCR_EL2={self._HCR_EL2:#x} [{' '.join(hcr_names(self._HCR_EL2))}], "
                f"CPTR_EL2={self._CPTR_EL2:#x}, MDCR_EL2={self._MDCR_EL2:#x}, "
                f"ESR_EL2={self.ESR_EL2:#x})")
