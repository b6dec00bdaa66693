"""The EL2 register file the hypervisor programs for each vCPU: HCR_EL2 and CPTR_EL2.

Arm ARM (DDI 0487) D23.2 "HCR_EL2, Hypervisor Configuration Register" and "CPTR_EL2,
Architectural Feature Trap Register (EL2)". The bit names are the Arm ARM's (Linux's
``HCR_*`` macros in arch/arm64/include/asm/kvm_arm.h are the same bits).

hvsim is the hypervisor, so these registers are Python state, ``vcpu.el2.hcr`` and
``vcpu.el2.cptr``, not the engine's own HCR_EL2: the engine keeps only HCR_EL2.RW (EL1 is
AArch64), because QEMU acting on VM, IMO, TSC ... would take the guest to an EL2 that has no
code. hvsim enforces the trap controls itself (:mod:`.traps`). A write is effective at the
next entry into the guest, as on hardware where the hypervisor's ERET follows it; written
from an exit handler while the guest is inside the engine, the guest is re-entered before it
runs on (the engine stops at the end of the current translation block).

The value each vCPU starts with is what KVM programs for a 64-bit guest (``vcpu_reset_hcr``):
``HCR_GUEST_FLAGS`` (Linux 6.x: TSC TSW TWE TWI VM BSU_IS FB TACR AMO SWIO TIDCP RW TLOR FMO
IMO PTW TID3 TID1), plus FWB (hvsim plays a host with FEAT_S2FWB, so KVM does not add TVM to
watch the guest's MMU coming on), plus TID2 (no FEAT_EVT, so not TID4). KVM then clears TWE
and keeps TWI at each vcpu_load when the vCPU thread runs alone on its CPU
(``vcpu_clear_wfx_traps``, the default ``kvm-arm.wfe_trap_policy``): WFI exits, WFE does not.
The ID-register and ACTLR traps (TID1/TID2/TID3/TACR) cost nothing on the guest's other
MRS/MSR: only the trapped instructions are hooked, found when their code is translated
(:mod:`.traps`), so an untrapped MRS/MSR runs natively.
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
HCR_MODELLED = {"TWI", "TSC", "TVM", "TRVM", "TID1", "TID2", "TID3", "TACR", "RW"}

HCR_EL2_RESET = 0  # the Arm ARM leaves most fields UNKNOWN on a warm reset; hvsim uses 0

HCR_GUEST_FLAGS = (HCR_TSC | HCR_TSW | HCR_TWE | HCR_TWI | HCR_VM | HCR_BSU_IS
                   | HCR_FB | HCR_TACR | HCR_AMO | HCR_SWIO | HCR_TIDCP | HCR_RW
                   | HCR_TLOR | HCR_FMO | HCR_IMO | HCR_PTW | HCR_TID3 | HCR_TID1)
# What hvsim programs before a vCPU's first entry (see the module docstring).
HCR_EL2_DEFAULT = (HCR_GUEST_FLAGS | HCR_FWB | HCR_TID2) & ~HCR_TWE

# CPTR_EL2 with HCR_EL2.E2H == 0 (D23.2 "CPTR_EL2"): RES1 bits 13, 12 (no SME), 9, 7:0.
CPTR_EL2_TFP = 1 << 10  # trap FP / Advanced SIMD (EC 0x07): kept, not enforced yet
CPTR_EL2_TZ = 1 << 8
CPTR_EL2_TTA = 1 << 20
CPTR_EL2_TAM = 1 << 30
CPTR_EL2_TCPAC = 1 << 31
CPTR_EL2_RES1 = 0x32FF  # Linux CPTR_NVHE_EL2_RES1
CPTR_EL2_DEFAULT = CPTR_EL2_RES1  # KVM traps nothing by default for a guest that may use FP

_MASK64 = (1 << 64) - 1


def hcr_names(value: int) -> list[str]:
    """The HCR_EL2 fields set in ``value``, by name (multi-bit fields as NAME=n)."""
    names = []
    for name, mask, _ in HCR_FIELDS:
        field = (value & mask) >> ((mask & -mask).bit_length() - 1)
        if field:
            names.append(name if mask & (mask - 1) == 0 else f"{name}={field}")
    return names


class El2Regs:
    """One vCPU's EL2 registers as its hypervisor programs them.

    ``hcr`` and ``cptr`` read and write HCR_EL2 and CPTR_EL2 (RES0 bits read as 0, RES1 bits
    as 1). ``on_change`` is called after each write (the vCPU's trap set-up); it is the vCPU
    that decides when the change reaches the running guest (the next entry)."""

    __slots__ = ("_cptr", "_hcr", "on_change")

    def __init__(self, on_change=None) -> None:
        self._hcr = HCR_EL2_DEFAULT
        self._cptr = CPTR_EL2_DEFAULT
        self.on_change = on_change

    @property
    def hcr(self) -> int:
        return self._hcr

    @hcr.setter
    def hcr(self, value: int) -> None:
        self._hcr = value & _MASK64 & ~HCR_RES0
        if self.on_change is not None:
            self.on_change()

    @property
    def cptr(self) -> int:
        return self._cptr

    @cptr.setter
    def cptr(self, value: int) -> None:
        self._cptr = (value & 0xFFFF_FFFF) | CPTR_EL2_RES1
        if self.on_change is not None:
            self.on_change()

    def __repr__(self) -> str:
        return f"El2Regs(HCR_EL2={self._hcr:#x} [{' '.join(hcr_names(self._hcr))}], CPTR_EL2={self._cptr:#x})"
