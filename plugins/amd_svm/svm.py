"""SVM operation on one logical processor (AMD APM Vol. 2, 15.4, 15.5, 15.17, 15.30).

- Enabling: EFER.SVME (bit 12); VM_CR (MSR 0xC001_0114) with SVMDIS and LOCK; VM_HSAVE_PA
  (MSR 0xC001_0117), where VMRUN saves host state (15.30).
- The global interrupt flag: STGI sets it, CLGI clears it, VMRUN sets it, #VMEXIT clears it
  (15.17).
- The SVM instructions' own faults: #UD with EFER.SVME clear, #GP at CPL > 0, #GP for a VMCB
  address that is not 4 KiB aligned or lies beyond the physical-address width (Vol. 3, VMRUN,
  VMLOAD, VMSAVE, STGI, CLGI, INVLPGA, SKINIT).
- The VMRUN consistency checks (15.5.1 "Canonicalization and Consistency Checks"): each failure
  is reported with the APM's wording, and a failed VMRUN is a #VMEXIT with EXITCODE
  VMEXIT_INVALID (-1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .iopm import IOPM_SIZE, MSRPM_SIZE, map_base
from .vmcb import FIELD, INTERCEPT, VMEXIT_INVALID, Event, EventType, Vmcb, field_value

MSR_EFER = 0xC000_0080
MSR_VM_CR = 0xC001_0114
MSR_VM_HSAVE_PA = 0xC001_0117

EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
EFER_SVME, EFER_LMSLE, EFER_FFXSR, EFER_TCE = 1 << 12, 1 << 13, 1 << 14, 1 << 15

VM_CR_DPD, VM_CR_R_INIT, VM_CR_DIS_A20M = 1 << 0, 1 << 1, 1 << 2
VM_CR_LOCK, VM_CR_SVMDIS = 1 << 3, 1 << 4
VM_CR_BITS = VM_CR_DPD | VM_CR_R_INIT | VM_CR_DIS_A20M | VM_CR_LOCK | VM_CR_SVMDIS

CR0_PE, CR0_NW, CR0_CD, CR0_PG = 1 << 0, 1 << 29, 1 << 30, 1 << 31
CR4_PAE = 1 << 5

# CR4 bits an AMD64 processor defines (Vol. 2, 3.1.3): VME PVI TSD DE PSE PAE MCE PGE
# PCE OSFXSR OSXMMEXCPT UMIP LA57 (0-12), FSGSBASE PCIDE OSXSAVE (16-18), SMEP SMAP PKE CET (20-23).
CR4_DEFINED = (0x1FFF | 0x7 << 16 | 0xF << 20)
# EFER bits this model's processor implements (Vol. 2, 3.1.7); the rest are MBZ for it.
EFER_DEFINED = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | EFER_SVME | EFER_LMSLE | EFER_FFXSR | EFER_TCE

# Vectors that are exceptions (Vol. 2, 8.2, Table 8-1): not 2 (NMI is an interrupt) and not the
# reserved 9, 15, 20, 22-27, 31. EVENTINJ of TYPE 3 with any other vector is illegal (15.20).
EXCEPTION_VECTORS = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 21, 28, 29, 30})
_EVENT_TYPES = frozenset(int(t) for t in EventType)


class SvmFault(Exception):
    """An SVM instruction or MSR access faulted: ``vector`` is "#UD" or "#GP" (error code 0)."""

    def __init__(self, vector: str, reason: str) -> None:
        super().__init__(f"{vector}: {reason}")
        self.vector = vector
        self.reason = reason


@dataclass(frozen=True)
class SvmFeatures:
    """What this processor implements (CPUID Fn8000_0008 and Fn8000_0001 in real life)."""

    phys_addr_bits: int = 48
    long_mode: bool = True
    cr4_bits: int = CR4_DEFINED
    efer_bits: int = EFER_DEFINED
    skinit: bool = False  # SKINIT and its STGI-without-SVME are not modelled
    asids: int = 0x8000  # CPUID Fn8000_000A EBX: number of ASIDs

    # CPUID Fn8000_000A EDX (APM Vol. 3, Appendix E.4.10): what hvsim's SVM implements
    SVM_FEATURES = {0: "NP", 3: "NRIPS", 5: "VmcbClean", 6: "FlushByAsid", 7: "DecodeAssists",
                    10: "PauseFilter", 12: "PauseFilterThreshold", 13: "AVIC", 16: "VGIF"}

    def cpuid_8000_000a(self) -> tuple[int, int, int, int]:
        """EAX (SVM revision 1), EBX (ASIDs), ECX (0), EDX (feature bits, AVIC = bit 13)."""
        return 1, self.asids, 0, sum(1 << bit for bit in self.SVM_FEATURES)


# -- VMRUN consistency checks (15.5.1) ----------------------------------------------------------
# (id, the APM's wording), in the APM's order.
CHECKS: dict[str, str] = {
    "EFER_SVME": "EFER.SVME is zero.",
    "CR0_CD_NW": "CR0.CD is zero and CR0.NW is set.",
    "CR0_HIGH": "CR0[63:32] are not zero.",
    "CR3_MBZ": "Any MBZ bit of CR3 is set.",
    "CR4_MBZ": "Any MBZ bit of CR4 is set.",
    "DR6_HIGH": "DR6[63:32] are not zero.",
    "DR7_HIGH": "DR7[63:32] are not zero.",
    "EFER_MBZ": "Any MBZ bit of EFER is set.",
    "LONG_MODE_UNSUPPORTED": "EFER.LMA or EFER.LME is non-zero and this processor does not support long mode.",
    "LME_PG_NO_PAE": "EFER.LME and CR0.PG are both set and CR4.PAE is zero.",
    "LME_PG_NO_PE": "EFER.LME and CR0.PG are both non-zero and CR0.PE is zero.",
    "LME_PG_PAE_CS_L_D": "EFER.LME, CR0.PG, CR4.PAE, CS.L, and CS.D are all non-zero.",
    "VMRUN_INTERCEPT": "The VMRUN intercept bit is clear.",
    "PERMISSION_MAP_ADDRESS": ("The MSR or IOIO intercept tables extend to a physical address that is "
                               "greater than or equal to the maximum supported physical address."),
    "EVENTINJ": "Illegal event injection (see Section 15.20).",
    "ASID_ZERO": "ASID is equal to zero.",
}


@dataclass(frozen=True)
class CheckFailure:
    check: str  # a key of CHECKS
    detail: str = ""

    @property
    def text(self) -> str:
        return CHECKS[self.check]

    def __str__(self) -> str:
        return f"{self.text} ({self.detail})" if self.detail else self.text


def eventinj_is_legal(value: int) -> bool:
    """15.20: VMRUN fails on a reserved TYPE, or TYPE 3 (exception) with a vector that is not an
    exception (this includes 2, the NMI). An EVENTINJ without V set injects nothing."""
    ev = Event.decode(value)
    if not ev.valid:
        return True
    if ev.type not in _EVENT_TYPES:
        return False
    return ev.type != EventType.EXCEPTION or ev.vector in EXCEPTION_VECTORS


def vmrun_consistency_checks(vmcb: Vmcb, features: SvmFeatures = SvmFeatures()) -> list[CheckFailure]:
    """Every check of 15.5.1 that the guest state in ``vmcb`` fails (empty: VMRUN may proceed)."""
    page = vmcb.page()
    v = {name: field_value(page, FIELD[name]) for name in
         ("EFER", "CR0", "CR3", "CR4", "DR6", "DR7", "CS_ATTRIB", "GUEST_ASID", "EVENTINJ",
          "IOPM_BASE_PA", "MSRPM_BASE_PA")}
    efer, cr0, cr3, cr4 = v["EFER"], v["CR0"], v["CR3"], v["CR4"]
    cs_l, cs_d = v["CS_ATTRIB"] >> 9 & 1, v["CS_ATTRIB"] >> 10 & 1
    long_paging = bool(efer & EFER_LME and cr0 & CR0_PG)
    limit = 1 << features.phys_addr_bits
    out: list[CheckFailure] = []

    def fail(check: str, cond, detail: str = "") -> None:
        if cond:
            out.append(CheckFailure(check, detail))

    fail("EFER_SVME", not efer & EFER_SVME, f"EFER={efer:#x}")
    fail("CR0_CD_NW", not cr0 & CR0_CD and cr0 & CR0_NW, f"CR0={cr0:#x}")
    fail("CR0_HIGH", cr0 >> 32, f"CR0={cr0:#x}")
    # In long mode CR3 bits 63:52 are MBZ, and so are the bits above the physical-address width
    # (Vol. 2, 3.1.2); legacy-mode CR3 has no MBZ bit this model checks.
    cr3_mbz = ~(limit - 1) & (1 << 64) - 1 if long_paging else 0
    fail("CR3_MBZ", cr3 & cr3_mbz, f"CR3={cr3:#x}")
    fail("CR4_MBZ", cr4 & ~features.cr4_bits, f"CR4={cr4:#x}")
    fail("DR6_HIGH", v["DR6"] >> 32, f"DR6={v['DR6']:#x}")
    fail("DR7_HIGH", v["DR7"] >> 32, f"DR7={v['DR7']:#x}")
    fail("EFER_MBZ", efer & ~features.efer_bits, f"EFER={efer:#x}")
    fail("LONG_MODE_UNSUPPORTED", efer & (EFER_LMA | EFER_LME) and not features.long_mode, f"EFER={efer:#x}")
    fail("LME_PG_NO_PAE", long_paging and not cr4 & CR4_PAE)
    fail("LME_PG_NO_PE", long_paging and not cr0 & CR0_PE)
    fail("LME_PG_PAE_CS_L_D", long_paging and cr4 & CR4_PAE and cs_l and cs_d, f"CS.attrib={v['CS_ATTRIB']:#x}")
    vmrun = INTERCEPT["VMRUN"]
    fail("VMRUN_INTERCEPT", not field_value(page, FIELD["INTERCEPT_MISC2"]) >> vmrun.bit & 1)
    for name, size in (("MSRPM_BASE_PA", MSRPM_SIZE), ("IOPM_BASE_PA", IOPM_SIZE)):
        fail("PERMISSION_MAP_ADDRESS", map_base(v[name]) + size > limit, f"{name}={v[name]:#x}")
    fail("EVENTINJ", not eventinj_is_legal(v["EVENTINJ"]), f"EVENTINJ={v['EVENTINJ']:#x}")
    fail("ASID_ZERO", v["GUEST_ASID"] == 0)
    return out


def apply_vmexit_invalid(vmcb: Vmcb) -> None:
    """A failed VMRUN is a #VMEXIT with EXITCODE VMEXIT_INVALID (-1, all 64 bits set) (15.5.1)."""
    vmcb.write("EXITCODE", VMEXIT_INVALID)


# -- the logical processor's SVM state ------------------------------------------------------------
@dataclass
class SvmCpu:
    """EFER, VM_CR, VM_HSAVE_PA and GIF of one logical processor."""

    features: SvmFeatures = field(default_factory=SvmFeatures)
    efer: int = 0
    vm_cr: int = 0
    vm_hsave_pa: int = 0
    gif: bool = True  # GIF is 1 after reset (15.17)
    in_guest: bool = False

    # MSRs
    def rdmsr(self, msr: int) -> int:
        if msr == MSR_EFER:
            return self.efer
        if msr == MSR_VM_CR:
            return self.vm_cr
        if msr == MSR_VM_HSAVE_PA:
            return self.vm_hsave_pa
        raise KeyError(f"MSR {msr:#x} is not an SVM MSR")

    def wrmsr(self, msr: int, value: int) -> None:
        """WRMSR of EFER, VM_CR or VM_HSAVE_PA; raises :class:`SvmFault` ("#GP") as the APM says."""
        if msr == MSR_EFER:
            if value & ~self.features.efer_bits:
                raise SvmFault("#GP", f"EFER reserved bits set in {value:#x}")
            if value & EFER_SVME and self.vm_cr & VM_CR_SVMDIS:
                raise SvmFault("#GP", "VM_CR.SVMDIS is set: EFER.SVME is MBZ (15.4)")
            self.efer = value
        elif msr == MSR_VM_CR:
            if value & ~VM_CR_BITS:
                raise SvmFault("#GP", f"VM_CR reserved bits set in {value:#x}")
            if value & VM_CR_SVMDIS and self.efer & EFER_SVME:
                raise SvmFault("#GP", "setting VM_CR.SVMDIS while EFER.SVME is 1 (15.30.1)")
            if self.vm_cr & VM_CR_LOCK:  # LOCK: writes to LOCK and SVMDIS are ignored (15.30.1)
                locked = VM_CR_LOCK | VM_CR_SVMDIS
                value = (value & ~locked) | (self.vm_cr & locked)
            self.vm_cr = value
        elif msr == MSR_VM_HSAVE_PA:
            if value & 0xFFF or value >> self.features.phys_addr_bits:
                raise SvmFault("#GP", f"VM_HSAVE_PA {value:#x} is not a 4 KiB aligned physical address (15.30.4)")
            self.vm_hsave_pa = value
        else:
            raise KeyError(f"MSR {msr:#x} is not an SVM MSR")

    # instructions
    def check_instruction(self, mnemonic: str, cpl: int = 0, rax: int | None = None) -> None:
        """The faults an SVM instruction takes before anything else (before its intercept, as on
        hardware): #UD with EFER.SVME clear, #GP(0) at CPL > 0, #GP(0) for a bad VMCB address."""
        if mnemonic == "SKINIT" and not self.features.skinit:
            raise SvmFault("#UD", "SKINIT is not supported by this processor")
        if mnemonic in ("VMRUN", "VMLOAD", "VMSAVE", "STGI", "CLGI", "INVLPGA", "SKINIT"):
            if not self.efer & EFER_SVME:
                raise SvmFault("#UD", f"{mnemonic} with EFER.SVME clear")
            if cpl:
                raise SvmFault("#GP", f"{mnemonic} at CPL {cpl}")
        else:
            raise ValueError(f"{mnemonic} is not an SVM instruction this model checks")
        if mnemonic in ("VMRUN", "VMLOAD", "VMSAVE") and rax is not None and (
                rax & 0xFFF or rax >> self.features.phys_addr_bits):
            raise SvmFault("#GP", f"VMCB address {rax:#x} is not 4 KiB aligned within the physical-address width")

    def stgi(self, cpl: int = 0) -> None:
        self.check_instruction("STGI", cpl)
        self.gif = True

    def clgi(self, cpl: int = 0) -> None:
        self.check_instruction("CLGI", cpl)
        self.gif = False

    def vmrun(self, vmcb: Vmcb, cpl: int = 0) -> list[CheckFailure]:
        """VMRUN's checks: faults (raised), then 15.5.1 (returned). On a failed check the VMCB gets
        EXITCODE VMEXIT_INVALID and the processor is back in the host with GIF clear, as after any
        #VMEXIT; otherwise it is in the guest with GIF set."""
        self.check_instruction("VMRUN", cpl, vmcb.pa)
        failures = vmrun_consistency_checks(vmcb, self.features)
        if failures:
            apply_vmexit_invalid(vmcb)
            self.gif = False
        else:
            self.gif = True
            self.in_guest = True
        return failures

    def vmexit(self) -> None:
        """#VMEXIT: back to the host, GIF clear (15.6, 15.17)."""
        self.in_guest = False
        self.gif = False
