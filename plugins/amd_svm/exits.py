"""#VMEXITs as SVM records them: EXITCODE, EXITINFO1, EXITINFO2 and nRIP in the VMCB control
area (AMD APM Vol. 2, 15.6 and Appendix C "SVM Intercept Exit Codes").
"""

from __future__ import annotations

from hvsim.core.exits import Exit, ExitKind
from hvsim.plugins.x86.cpuid import cpuid
from hvsim.plugins.x86.vendor import X86Vendor

EXIT_CODES = {
    **{n: f"CR{n}_READ" for n in range(16)},
    **{0x10 + n: f"CR{n}_WRITE" for n in range(16)},
    **{0x20 + n: f"DR{n}_READ" for n in range(16)},
    **{0x30 + n: f"DR{n}_WRITE" for n in range(16)},
    **{0x40 + n: f"EXCP{n}" for n in range(32)},
    0x60: "INTR", 0x61: "NMI", 0x62: "SMI", 0x63: "INIT", 0x64: "VINTR", 0x65: "CR0_SEL_WRITE",
    0x66: "IDTR_READ", 0x67: "GDTR_READ", 0x68: "LDTR_READ", 0x69: "TR_READ", 0x6A: "IDTR_WRITE",
    0x6B: "GDTR_WRITE", 0x6C: "LDTR_WRITE", 0x6D: "TR_WRITE", 0x6E: "RDTSC", 0x6F: "RDPMC",
    0x70: "PUSHF", 0x71: "POPF", 0x72: "CPUID", 0x73: "RSM", 0x74: "IRET", 0x75: "SWINT",
    0x76: "INVD", 0x77: "PAUSE", 0x78: "HLT", 0x79: "INVLPG", 0x7A: "INVLPGA", 0x7B: "IOIO",
    0x7C: "MSR", 0x7D: "TASK_SWITCH", 0x7E: "FERR_FREEZE", 0x7F: "SHUTDOWN", 0x80: "VMRUN",
    0x81: "VMMCALL", 0x82: "VMLOAD", 0x83: "VMSAVE", 0x84: "STGI", 0x85: "CLGI", 0x86: "SKINIT",
    0x87: "RDTSCP", 0x88: "ICEBP", 0x89: "WBINVD", 0x8A: "MONITOR", 0x8B: "MWAIT",
    0x8C: "MWAIT_CONDITIONAL", 0x8D: "XSETBV", 0x8E: "RDPRU", 0x8F: "EFER_WRITE_TRAP",
    **{0x90 + n: f"CR{n}_WRITE_TRAP" for n in range(16)},
    0xA0: "INVLPGB", 0xA1: "INVLPGB_ILLEGAL", 0xA2: "INVPCID", 0xA3: "MCOMMIT", 0xA4: "TLBSYNC",
    0xA5: "BUSLOCK", 0xA6: "IDLE_HLT",
    0x400: "NPF", 0x401: "AVIC_INCOMPLETE_IPI", 0x402: "AVIC_NOACCEL", 0x403: "VMGEXIT",
    -1: "INVALID",
}
VMEXIT = {name: code for code, name in EXIT_CODES.items()}

VMEXIT_TASK_SWITCH = 0x7D
TS_IRET, TS_JMP, TS_HAS_ERROR_CODE, TS_RF = 1 << 36, 1 << 38, 1 << 44, 1 << 48  # EXITINFO2 (15.14.1)
VMEXIT_INTR, VMEXIT_NMI, VMEXIT_SMI, VMEXIT_INIT, VMEXIT_VINTR = 0x60, 0x61, 0x62, 0x63, 0x64
_EVENT_EXITS = {"external": VMEXIT_INTR, "nmi": VMEXIT_NMI, "smi": VMEXIT_SMI, "init": VMEXIT_INIT}
VMEXIT_CPUID = 0x72
VMEXIT_HLT = 0x78
VMEXIT_IOIO = 0x7B
VMEXIT_MSR = 0x7C
VMEXIT_SHUTDOWN = 0x7F
VMEXIT_VMMCALL = 0x81
VMEXIT_NPF = 0x400
_INSTRUCTION_EXITS = {"rdtsc": "RDTSC", "rdtscp": "RDTSCP", "invlpg": "INVLPG", "wbinvd": "WBINVD",
                      "invd": "INVD", "pause": "PAUSE", "vmrun": "VMRUN", "vmload": "VMLOAD", "vmsave": "VMSAVE",
                      "stgi": "STGI", "clgi": "CLGI", "skinit": "SKINIT", "invlpga": "INVLPGA",
                      "rdpmc": "RDPMC", "pushf": "PUSHF", "popf": "POPF", "iret": "IRET", "intn": "SWINT",
                      "icebp": "ICEBP", "monitor": "MONITOR", "mwait": "MWAIT",
                      "mwait_conditional": "MWAIT_CONDITIONAL", "xsetbv": "XSETBV", "rdpru": "RDPRU",
                      "efer_write_trap": "EFER_WRITE_TRAP", "invpcid": "INVPCID",
                      "sidt": "IDTR_READ", "sgdt": "GDTR_READ", "sldt": "LDTR_READ", "str": "TR_READ",
                      "lidt": "IDTR_WRITE", "lgdt": "GDTR_WRITE", "lldt": "LDTR_WRITE", "ltr": "TR_WRITE"}
CR_VALID = 1 << 63  # EXITINFO1 of a CR access: the exit was a MOV CR and bits 3:0 name its GPR (15.33.1)

# EXITINFO1 for IOIO intercepts (APM Vol. 2, Figure 15-2)
IOIO_TYPE_IN = 1 << 0
IOIO_STR = 1 << 2
IOIO_REP = 1 << 3
IOIO_SZ8, IOIO_SZ16, IOIO_SZ32 = 1 << 4, 1 << 5, 1 << 6
IOIO_A16, IOIO_A32, IOIO_A64 = 1 << 7, 1 << 8, 1 << 9
IOIO_SEG_SHIFT = 10
IOIO_PORT_SHIFT = 16

# EXITINFO1 for nested page faults: a #PF error code plus where in the walk it happened (15.25.6)
NPF_P, NPF_RW, NPF_US, NPF_RSV, NPF_ID = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
NPF_GUEST_FINAL = 1 << 32  # the fault was on the final guest-physical address
NPF_GUEST_TABLE = 1 << 33  # the fault was on a guest page-table access


class SvmExitInfo:
    """The VMCB control-area fields a VMM reads after #VMEXIT."""

    __slots__ = ("EXITCODE", "EXITINFO1", "EXITINFO2", "NRIP", "EXITINTINFO")

    def __init__(self, exitcode: int, exitinfo1: int = 0, exitinfo2: int = 0, nrip: int = 0,
                 exitintinfo: int = 0) -> None:
        self.EXITCODE = exitcode
        self.EXITINFO1 = exitinfo1
        self.EXITINFO2 = exitinfo2
        self.NRIP = nrip
        self.EXITINTINFO = exitintinfo

    def __repr__(self) -> str:
        return (f"EXITCODE={self.EXITCODE:#x} ({EXIT_CODES.get(self.EXITCODE)}) "
                f"EXITINFO1={self.EXITINFO1:#x} EXITINFO2={self.EXITINFO2:#x} nRIP={self.NRIP:#x}")


_IO_SIZE = {1: IOIO_SZ8, 2: IOIO_SZ16, 4: IOIO_SZ32}
_IO_ADDR = {16: IOIO_A16, 32: IOIO_A32, 64: IOIO_A64}


class SvmVendor(X86Vendor):
    name = "amd_svm"
    cpuid_vendor = b"AuthenticAMD"
    hypercall_insn = b"\x0f\x01\xd9"  # VMMCALL
    signature = 0x00A00F11  # family 19h
    brand = "hvsim virtual CPU (AMD SVM model)"

    def attach(self, vcpu, area):
        from .vmm import SvmGuestContext

        return SvmGuestContext(vcpu, area)

    def invalid_exit(self, reason):
        return Exit(ExitKind.INVALID_STATE, "VMEXIT_INVALID", SvmExitInfo(-1), detail=reason)

    def io_exit(self, port, size, is_in, value, rip, insn_len, imm, string=False, rep=False,
                address_size=64, segment=0):
        info1 = ((IOIO_TYPE_IN if is_in else 0) | (IOIO_STR if string else 0) | (IOIO_REP if rep else 0)
                 | _IO_SIZE[size] | _IO_ADDR[address_size] | (segment << IOIO_SEG_SHIFT)
                 | (port << IOIO_PORT_SHIFT))
        return Exit(ExitKind.PORT_IO, "VMEXIT_IOIO", SvmExitInfo(VMEXIT_IOIO, info1, rip + insn_len, rip + insn_len),
                    port, size, not is_in, value)

    def mmio_exit(self, gpa, size, is_write, value, rip, gla=None):
        # MMIO lives where the nested page table has no entry: a not-present NPF on the final
        # guest-physical address; EXITINFO2 is that address.
        info1 = (NPF_RW if is_write else 0) | NPF_GUEST_FINAL
        return Exit(ExitKind.MMIO, "VMEXIT_NPF", SvmExitInfo(VMEXIT_NPF, info1, gpa, 0),
                    gpa, size, is_write, value)

    def exception_exit(self, vector, error_code, rip, cr2, vectoring=None, length=0):
        # 15.12: EXITCODE 0x40 + vector; EXITINFO1 the error code where the exception has one;
        # EXITINFO2 the faulting address of a #PF (CR2 itself is not written). An exception
        # raised while delivering another event records that event in EXITINTINFO (15.7.2), in
        # EVENTINJ's format; the event types are EVENTINJ's (a software exception is TYPE 3).
        intinfo = 0
        if vectoring is not None:
            v_vector, v_code, v_type = vectoring
            v_type = {0: 0, 2: 2, 3: 3, 4: 4, 5: 3, 6: 3}.get(v_type, 3)
            intinfo = (v_vector & 0xFF | v_type << 8 | (1 << 11 if v_code is not None else 0) | 1 << 31
                       | ((v_code or 0) & 0xFFFF_FFFF) << 32)
        # An intercepted #BP / #OF of INT3 / INTO: RIP at the instruction, nRIP past it (15.7.1
        # saves nRIP for "exceptions caused by the INT3, INTO, and BOUND instructions"); INT1's
        # #DB and exceptions during an event's delivery get no nRIP.
        nrip = rip + length if length and vector in (3, 4) and vectoring is None else 0
        return Exit(ExitKind.EXCEPTION, f"VMEXIT_EXCP{vector}",
                    SvmExitInfo(0x40 + vector, error_code or 0, cr2 if vector == 14 else 0, nrip, intinfo),
                    cr2 if vector == 14 else 0, size=length if vectoring is None else 0, vector=vector,
                    value=error_code)

    @staticmethod
    def event_exit(kind: str, vector: int = 0) -> Exit:
        """An intercepted physical INTR (0x60), NMI (0x61), SMI (0x62) or INIT (0x63) (15.13):
        EXITINFO1/2 are 0 (an SMI from outside, not from an I/O instruction), and SVM has no
        acknowledge-on-exit: the host takes the interrupt itself."""
        code = _EVENT_EXITS[kind]
        return Exit(ExitKind.EVENT, f"VMEXIT_{EXIT_CODES[code]}", SvmExitInfo(code), vector=vector)

    @staticmethod
    def window_exit(kind: str) -> Exit:
        """VINTR (0x64, 15.21.4): a virtual interrupt (V_IRQ) is about to be taken."""
        return Exit(ExitKind.INTERRUPT_WINDOW, "VMEXIT_VINTR", SvmExitInfo(VMEXIT_VINTR))

    def instruction_exit(self, kind, rip, insn_len, operand):
        nrip = rip + insn_len
        if kind == "task_switch":
            # 15.14.1: EXITINFO1 the new TSS's selector; EXITINFO2 bit 36 an IRET, bit 38 a JMP,
            # bit 44 an error code in 31:0 (task gates in the IDT only), bit 48 EFLAGS.RF. No
            # next RIP is saved for it (not an instruction intercept).
            source, selector, rf = operand
            info2 = (TS_IRET if source == "iret" else 0) | (TS_JMP if source == "jmp" else 0) | (TS_RF if rf else 0)
            return Exit(ExitKind.INSTRUCTION, "VMEXIT_TASK_SWITCH", SvmExitInfo(VMEXIT_TASK_SWITCH, selector, info2))
        if kind in ("mov_to_cr", "mov_from_cr", "clts", "lmsw", "smsw", "cr0_sel_write"):
            # 15.8.1: CLTS and LMSW are CR0 writes, SMSW a CR0 read; with decode assists
            # (15.33.1) EXITINFO1 bit 63 marks a MOV CR and bits 3:0 give its GPR.
            mov = kind in ("mov_to_cr", "mov_from_cr") or kind == "cr0_sel_write" and len(operand) == 3 \
                and isinstance(operand[0], int)
            if kind == "cr0_sel_write":
                code = VMEXIT["CR0_SEL_WRITE"]
            elif kind in ("mov_to_cr", "mov_from_cr"):
                code = (0x10 if kind == "mov_to_cr" else 0x00) + operand[0]
            else:
                code = 0x00 if kind == "smsw" else 0x10
            info1 = CR_VALID | operand[1] if mov else 0
            return Exit(ExitKind.INSTRUCTION, f"VMEXIT_{EXIT_CODES[code]}", SvmExitInfo(code, info1, 0, nrip))
        if kind in ("mov_to_dr", "mov_from_dr"):
            dr, gpr = operand  # decode assists: EXITINFO1 3:0 the GPR (15.33.1)
            code = (0x30 if kind == "mov_to_dr" else 0x20) + dr
            return Exit(ExitKind.INSTRUCTION, f"VMEXIT_{EXIT_CODES[code]}", SvmExitInfo(code, gpr, 0, nrip))
        code = VMEXIT[_INSTRUCTION_EXITS[kind]]
        info1 = info2 = 0
        if kind in ("invlpg", "intn", "efer_write_trap"):
            info1 = operand[0]  # the linear address; the vector (decode assists); the new EFER
        elif kind == "invpcid":
            ops, linear, _ = operand  # EXITINFO1 the descriptor's address, EXITINFO2 the type
            info1, info2 = linear or 0, operand[2]
        if kind == "efer_write_trap":
            nrip = rip  # a trap: reported after the write, at the next instruction
        return Exit(ExitKind.INSTRUCTION, f"VMEXIT_{EXIT_CODES[code]}", SvmExitInfo(code, info1, info2, nrip))

    def cpuid_exit(self, rip):
        return Exit(ExitKind.CPUID, "VMEXIT_CPUID", SvmExitInfo(VMEXIT_CPUID, 0, 0, rip + 2))

    def hlt_exit(self, rip):
        return Exit(ExitKind.HALT, "VMEXIT_HLT", SvmExitInfo(VMEXIT_HLT, 0, 0, rip))

    def hypercall_exit(self, rip):
        return Exit(ExitKind.HYPERCALL, "VMEXIT_VMMCALL", SvmExitInfo(VMEXIT_VMMCALL, 0, 0, rip + 3))

    def msr_exit(self, msr, is_write, value, rip, insn_len):
        # EXITINFO1 is 0 for RDMSR and 1 for WRMSR; the MSR number is in the guest's ECX (15.11).
        return Exit(ExitKind.SYSREG, "VMEXIT_MSR", SvmExitInfo(VMEXIT_MSR, int(is_write), 0, rip + insn_len),
                    msr, 8, is_write, value)

    def stage2_exit(self, fault, rip):
        """#VMEXIT(NPF) (15.25.6): EXITINFO1 the #PF-style error code (P: the entry was present
        but did not allow the access; RW, US, RSV, ID) with bit 32 for the final guest-physical
        address or bit 33 for a guest page-table access; EXITINFO2 the guest-physical address."""
        code = fault.syndrome or (NPF_US | (NPF_RW if fault.write else 0) | (NPF_ID if fault.fetch else 0))
        info1 = code | (NPF_GUEST_TABLE if fault.walk else NPF_GUEST_FINAL)
        return Exit(ExitKind.STAGE2_FAULT, "VMEXIT_NPF", SvmExitInfo(VMEXIT_NPF, info1, fault.gpa, 0),
                    fault.gpa, 0, fault.write, detail=fault.detail)

    def triple_fault_exit(self, detail):
        from hvsim.core.vm import STATUS_GUEST_CRASH

        return Exit(ExitKind.SHUTDOWN, "VMEXIT_SHUTDOWN", SvmExitInfo(VMEXIT_SHUTDOWN),
                    value=STATUS_GUEST_CRASH, detail=f"guest crash: {detail}")

    def cpuid_leaf(self, leaf, subleaf, vcpu_index, vcpus):
        return cpuid(leaf, subleaf, self.cpuid_vendor, self.signature, self.brand, vcpu_index, vcpus)
