"""The EL2 exit record: ESR_EL2, FAR_EL2 and HPFAR_EL2, as the hardware writes them on a trap.

Arm ARM (DDI 0487), D24.2 "ESR_EL2, Exception Syndrome Register (EL2)" and its ISS encodings,
"FAR_EL2" and "HPFAR_EL2". Exception-class values and names are Linux's
(arch/arm64/include/asm/esr.h), which KVM's ``arm_exit_handlers`` table is indexed by; the
names are what ``Exit.reason`` and ``--stats`` show.
"""

from __future__ import annotations

# ESR_ELx.EC, bits [31:26]: the exception class.
ESR_ELx_EC_UNKNOWN = 0x00
ESR_ELx_EC_WFx = 0x01
ESR_ELx_EC_FP_ASIMD = 0x07
ESR_ELx_EC_ILL = 0x0E
ESR_ELx_EC_SVC64 = 0x15
ESR_ELx_EC_HVC64 = 0x16
ESR_ELx_EC_SMC64 = 0x17
ESR_ELx_EC_SYS64 = 0x18
ESR_ELx_EC_IABT_LOW = 0x20
ESR_ELx_EC_IABT_CUR = 0x21
ESR_ELx_EC_PC_ALIGN = 0x22
ESR_ELx_EC_DABT_LOW = 0x24
ESR_ELx_EC_DABT_CUR = 0x25
ESR_ELx_EC_SP_ALIGN = 0x26
ESR_ELx_EC_SERROR = 0x2F
ESR_ELx_EC_BRK64 = 0x3C

EC_NAMES = {value: name for name, value in globals().items() if name.startswith("ESR_ELx_EC_")}

ESR_ELx_EC_SHIFT = 26
ESR_ELx_IL = 1 << 25  # instruction length: 1 for a 32-bit A64 instruction
ESR_ELx_ISS_MASK = ESR_ELx_IL - 1

# ISS for a Data Abort (EC 0x24/0x25), "ISS encoding for an exception from a Data Abort".
ESR_ELx_ISV = 1 << 24  # bits [23:14] hold a valid instruction syndrome
ESR_ELx_SAS_SHIFT = 22  # access size: 0 byte, 1 halfword, 2 word, 3 doubleword
ESR_ELx_SSE = 1 << 21  # the load sign-extends
ESR_ELx_SRT_SHIFT = 16  # the transfer register Xt/Wt
ESR_ELx_SF = 1 << 15  # Xt is 64 bits wide
ESR_ELx_AR = 1 << 14  # acquire/release semantics
ESR_ELx_FnV = 1 << 10  # FAR not valid
ESR_ELx_EA = 1 << 9  # external abort type
ESR_ELx_CM = 1 << 8  # cache maintenance
ESR_ELx_S1PTW = 1 << 7  # stage-2 fault on a stage-1 table walk
ESR_ELx_WNR = 1 << 6  # write, not read
ESR_ELx_FSC_EXTABT = 0x10  # synchronous external abort, not on a table walk


def fsc_translation(level: int) -> int:
    """DFSC/IFSC 0b0001LL: translation fault at lookup level ``level`` (0..3)."""
    return 0x04 | level


# ISS for WFI/WFE (EC 0x01), "ISS encoding for an exception from a WF* instruction": from
# AArch64 state CV is 1 and COND is 0b1110; TI bits [1:0] are 00 for WFI.
ESR_ELx_CV = 1 << 24
ESR_ELx_COND_AL = 0xE << 20
ESR_ELx_WFx_ISS_WFI = 0b00
ESR_ELx_WFx_ISS_WFE = 0b01


# ISS for MSR/MRS (EC 0x18), "ISS encoding for an exception from MSR, MRS, or System
# instruction execution in AArch64 state" (Linux ESR_ELx_SYS64_ISS_*).
ESR_ELx_SYS64_ISS_OP0_SHIFT = 20
ESR_ELx_SYS64_ISS_OP2_SHIFT = 17
ESR_ELx_SYS64_ISS_OP1_SHIFT = 14
ESR_ELx_SYS64_ISS_CRN_SHIFT = 10
ESR_ELx_SYS64_ISS_RT_SHIFT = 5
ESR_ELx_SYS64_ISS_CRM_SHIFT = 1
ESR_ELx_SYS64_ISS_DIR_READ = 1  # Direction: 1 = MRS (read), 0 = MSR (write)
ESR_ELx_SYS64_ISS_DIR_WRITE = 0


def sys64_iss(op0: int, op1: int, crn: int, crm: int, op2: int, rt: int, is_read: bool) -> int:
    """ISS of a trapped MRS/MSR: Op0 [21:20], Op2 [19:17], Op1 [16:14], CRn [13:10], Rt [9:5],
    CRm [4:1], Direction [0]."""
    return ((op0 << ESR_ELx_SYS64_ISS_OP0_SHIFT) | (op2 << ESR_ELx_SYS64_ISS_OP2_SHIFT)
            | (op1 << ESR_ELx_SYS64_ISS_OP1_SHIFT) | (crn << ESR_ELx_SYS64_ISS_CRN_SHIFT)
            | (rt << ESR_ELx_SYS64_ISS_RT_SHIFT) | (crm << ESR_ELx_SYS64_ISS_CRM_SHIFT)
            | (ESR_ELx_SYS64_ISS_DIR_READ if is_read else ESR_ELx_SYS64_ISS_DIR_WRITE))


def esr(ec: int, iss: int = 0) -> int:
    """ESR_ELx for a synchronous exception from a 32-bit A64 instruction."""
    return (ec << ESR_ELx_EC_SHIFT) | ESR_ELx_IL | (iss & ESR_ELx_ISS_MASK)


ESR_WFI = esr(ESR_ELx_EC_WFx, ESR_ELx_CV | ESR_ELx_COND_AL | ESR_ELx_WFx_ISS_WFI)
ESR_WFE = esr(ESR_ELx_EC_WFx, ESR_ELx_CV | ESR_ELx_COND_AL | ESR_ELx_WFx_ISS_WFE)


def hpfar(ipa: int) -> int:
    """HPFAR_EL2.FIPA, bits [43:4], holds IPA[51:12] of a stage-2 fault."""
    return (ipa >> 12) << 4


class El2Record:
    """What EL2 reads after a trap: ESR_EL2, FAR_EL2, HPFAR_EL2 (``Exit.raw`` on arm_el2).

    FAR_EL2 and HPFAR_EL2 are meaningful for aborts only (0 otherwise). The properties decode
    the ESR_EL2 fields by their Arm ARM names (``rec.EC``, ``rec.ISV``, ``rec.SRT`` ...).
    Records are immutable and may be shared between exits with the same syndrome.
    """

    __slots__ = ("ESR_EL2", "FAR_EL2", "HPFAR_EL2")

    def __init__(self, esr_el2: int, far_el2: int = 0, hpfar_el2: int = 0) -> None:
        self.ESR_EL2 = esr_el2
        self.FAR_EL2 = far_el2
        self.HPFAR_EL2 = hpfar_el2

    # -- ESR_EL2 fields --------------------------------------------------------------------
    @property
    def EC(self) -> int:  # noqa: N802 (the Arm ARM's field names)
        return (self.ESR_EL2 >> ESR_ELx_EC_SHIFT) & 0x3F

    @property
    def IL(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> 25) & 1

    @property
    def ISS(self) -> int:  # noqa: N802
        return self.ESR_EL2 & ESR_ELx_ISS_MASK

    @property
    def ISV(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> 24) & 1

    @property
    def SAS(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> ESR_ELx_SAS_SHIFT) & 3

    @property
    def SSE(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> 21) & 1

    @property
    def SRT(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> ESR_ELx_SRT_SHIFT) & 0x1F

    @property
    def SF(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> 15) & 1

    @property
    def AR(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> 14) & 1

    @property
    def WnR(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> 6) & 1

    @property
    def DFSC(self) -> int:  # noqa: N802
        return self.ESR_EL2 & 0x3F

    @property
    def TI(self) -> int:  # noqa: N802
        """WFx: 0b00 WFI, 0b01 WFE (ISS bits [1:0])."""
        return self.ESR_EL2 & 0b11

    @property
    def CV(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> 24) & 1

    @property
    def COND(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> 20) & 0xF

    # MRS/MSR (EC 0x18)
    @property
    def Op0(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> ESR_ELx_SYS64_ISS_OP0_SHIFT) & 3

    @property
    def Op2(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> ESR_ELx_SYS64_ISS_OP2_SHIFT) & 7

    @property
    def Op1(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> ESR_ELx_SYS64_ISS_OP1_SHIFT) & 7

    @property
    def CRn(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> ESR_ELx_SYS64_ISS_CRN_SHIFT) & 0xF

    @property
    def Rt(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> ESR_ELx_SYS64_ISS_RT_SHIFT) & 0x1F

    @property
    def CRm(self) -> int:  # noqa: N802
        return (self.ESR_EL2 >> ESR_ELx_SYS64_ISS_CRM_SHIFT) & 0xF

    @property
    def Direction(self) -> int:  # noqa: N802
        """1: a read (MRS), 0: a write (MSR)."""
        return self.ESR_EL2 & 1

    @property
    def imm16(self) -> int:
        """The HVC/SVC/SMC immediate (ISS bits [15:0])."""
        return self.ESR_EL2 & 0xFFFF

    @property
    def IPA(self) -> int:  # noqa: N802
        """The faulting IPA as KVM rebuilds it: HPFAR_EL2.FIPA page plus FAR_EL2's offset."""
        return ((self.HPFAR_EL2 >> 4) << 12) | (self.FAR_EL2 & 0xFFF)

    @property
    def ec_name(self) -> str:
        return EC_NAMES.get(self.EC, f"ESR_ELx_EC_{self.EC:#04x}")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, El2Record) and self.ESR_EL2 == other.ESR_EL2
                and self.FAR_EL2 == other.FAR_EL2 and self.HPFAR_EL2 == other.HPFAR_EL2)

    def __hash__(self) -> int:
        return hash((self.ESR_EL2, self.FAR_EL2, self.HPFAR_EL2))

    def __repr__(self) -> str:
        return (f"El2Record({self.ec_name}, ESR_EL2={self.ESR_EL2:#010x}, "
                f"FAR_EL2={self.FAR_EL2:#x}, HPFAR_EL2={self.HPFAR_EL2:#x})")


WFI_RECORD = El2Record(ESR_WFI)
