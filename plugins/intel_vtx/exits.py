"""VM exits as VMX records them: basic exit reasons (SDM Vol. 3D Appendix C) and exit
qualifications (SDM Vol. 3C 28.2.1). Names as Linux's ``asm/vmx.h`` / ``uapi/asm/vmx.h``.
"""

from __future__ import annotations

from hvsim.core.exits import Exit, ExitKind
from hvsim.plugins.x86.cpuid import cpuid
from hvsim.plugins.x86.vendor import X86Vendor

EXIT_REASONS = {
    0: "EXCEPTION_NMI", 1: "EXTERNAL_INTERRUPT", 2: "TRIPLE_FAULT", 3: "INIT_SIGNAL",
    4: "SIPI_SIGNAL", 5: "IO_SMI", 6: "OTHER_SMI", 7: "INTERRUPT_WINDOW", 8: "NMI_WINDOW",
    9: "TASK_SWITCH", 10: "CPUID", 11: "GETSEC", 12: "HLT", 13: "INVD", 14: "INVLPG", 15: "RDPMC",
    16: "RDTSC", 17: "RSM", 18: "VMCALL", 19: "VMCLEAR", 20: "VMLAUNCH", 21: "VMPTRLD",
    22: "VMPTRST", 23: "VMREAD", 24: "VMRESUME", 25: "VMWRITE", 26: "VMOFF", 27: "VMON",
    28: "CR_ACCESS", 29: "DR_ACCESS", 30: "IO_INSTRUCTION", 31: "MSR_READ", 32: "MSR_WRITE",
    33: "INVALID_STATE", 34: "MSR_LOAD_FAIL", 36: "MWAIT_INSTRUCTION", 37: "MONITOR_TRAP_FLAG",
    39: "MONITOR_INSTRUCTION", 40: "PAUSE_INSTRUCTION", 41: "MCE_DURING_VMENTRY",
    43: "TPR_BELOW_THRESHOLD", 44: "APIC_ACCESS", 45: "EOI_INDUCED", 46: "GDTR_IDTR",
    47: "LDTR_TR", 48: "EPT_VIOLATION", 49: "EPT_MISCONFIG", 50: "INVEPT", 51: "RDTSCP",
    52: "PREEMPTION_TIMER", 53: "INVVPID", 54: "WBINVD", 55: "XSETBV", 56: "APIC_WRITE",
    57: "RDRAND", 58: "INVPCID", 59: "VMFUNC", 60: "ENCLS", 61: "RDSEED", 62: "PML_FULL",
    63: "XSAVES", 64: "XRSTORS", 67: "UMWAIT", 68: "TPAUSE", 74: "BUS_LOCK", 75: "NOTIFY",
}
EXIT_REASON = {name: number for number, name in EXIT_REASONS.items()}

# What makes hvsim's VMX exit with each reason it produces (`hvsim spec ... exit-reasons`).
EXIT_CAUSES = {
    0: "exception bitmap (#PF with error-code mask/match)", 2: "triple fault", 33: "VM-entry failure (bit 31 set)",
    48: "an access to guest-physical memory the EPT does not map (MMIO)",
    9: "a far JMP/CALL to a TSS or task gate, IRET with EFLAGS.NT = 1 (always)", 10: "CPUID (always)", 11: "GETSEC (always, once CR4.SMXE = 1; hvsim's processor has no SMX: #UD)",
    12: "HLT exiting", 13: "INVD (always)", 14: "INVLPG exiting", 15: "RDPMC exiting", 16: "RDTSC exiting",
    18: "VMCALL (always)", **{n: "the guest's VMX instruction (always)" for n in (19, 20, 21, 22, 23, 24, 25, 26, 27, 50, 53, 59)},
    28: "MOV CR0/CR4 against the guest/host masks, CLTS, LMSW; CR3-load/store; CR8-load/store exiting",
    29: "MOV-DR exiting", 30: "unconditional I/O exiting, I/O bitmaps", 31: "MSR bitmaps", 32: "MSR bitmaps",
    36: "MWAIT exiting", 39: "MONITOR exiting", 40: "PAUSE exiting",
    43: "use TPR shadow: MOV to CR8, a write of VTPR (APIC-access page, x2APIC MSR 808H) below TPR_THRESHOLD (trap-like)",
    44: "virtualize APIC accesses: an access to the APIC-access page that is not virtualized (SDM 30.4)",
    45: "virtual-interrupt delivery: EOI virtualization of a vector set in the EOI-exit bitmap (trap-like)",
    56: "APIC-register virtualization: a virtualized write the VMM must complete (trap-like, SDM 30.4.3.3)", 46: "descriptor-table exiting (LGDT, LIDT, SGDT, SIDT)",
    47: "descriptor-table exiting (LLDT, LTR, SLDT, STR)", 51: "RDTSC exiting with enable RDTSCP", 54: "WBINVD exiting",
    55: "XSETBV (always)", 57: "RDRAND exiting", 58: "enable INVPCID and INVLPG exiting", 61: "RDSEED exiting",
    62: "enable PML: the PML index left 0-511 when an EPT accessed/dirty flag was to be set",
    63: "enable XSAVES/XRSTORS and the XSS-exiting bitmap", 64: "enable XSAVES/XRSTORS and the XSS-exiting bitmap",
}

EXIT_REASON_EXCEPTION_NMI = 0
EXIT_REASON_EXTERNAL_INTERRUPT = 1
EXIT_REASON_TRIPLE_FAULT = 2
EXIT_REASON_INIT_SIGNAL = 3
EXIT_REASON_PML_FULL = 62
EXIT_REASON_TASK_SWITCH = 9
TASK_SWITCH_SOURCES = {"call": 0, "iret": 1, "jmp": 2, "idt_task_gate": 3}
EXIT_REASON_INTERRUPT_WINDOW = 7
EXIT_REASON_NMI_WINDOW = 8
EXIT_REASON_MONITOR_TRAP_FLAG = 37
EXIT_REASON_PREEMPTION_TIMER = 52
EXIT_REASON_CPUID = 10
EXIT_REASON_HLT = 12
EXIT_REASON_VMCALL = 18
EXIT_REASON_IO_INSTRUCTION = 30
EXIT_REASON_CR_ACCESS = 28
_INSTRUCTION_REASONS = {"rdtsc": 16, "rdtscp": 51, "invlpg": 14, "wbinvd": 54, "invd": 13, "pause": 40,
                        "getsec": 11, "rdpmc": 15, "mwait": 36, "monitor": 39, "xsetbv": 55, "rdrand": 57,
                        "invpcid": 58, "rdseed": 61, "xsaves": 63, "xrstors": 64,
                        "sgdt": 46, "sidt": 46, "lgdt": 46, "lidt": 46, "sldt": 47, "str": 47, "lldt": 47,
                        "ltr": 47, "tpr_below_threshold": 43,
                        # VMX instructions executed by the guest (SDM 26.1.2: they always exit)
                        "vmclear": 19, "vmlaunch": 20, "vmptrld": 21, "vmptrst": 22, "vmread": 23,
                        "vmresume": 24, "vmwrite": 25, "vmxoff": 26, "vmxon": 27, "invept": 50,
                        "invvpid": 53, "vmfunc": 59}
EXIT_REASON_MSR_READ = 31
EXIT_REASON_MSR_WRITE = 32
EXIT_REASON_EPT_VIOLATION = 48
EXIT_REASON_EPT_MISCONFIG = 49
EXIT_REASON_INVALID_STATE_FAILED_ENTRY = 33 | (1 << 31)  # bit 31: VM-entry failure (SDM 27.8)

EXIT_REASON_DR_ACCESS = 29

# Exit qualification for control-register accesses (SDM Table 28-3): access type, bits 5:4
CR_MOV_TO, CR_MOV_FROM, CR_CLTS, CR_LMSW = 0, 1, 2, 3
CR_LMSW_MEMORY = 1 << 6  # LMSW operand type: memory
CR_LMSW_SOURCE_SHIFT = 16
# Exit qualification for MOV DR (SDM Table 28-4): DR 2:0, direction bit 4 (1 = MOV from DR), GPR 11:8
DR_DIRECTION_FROM = 1 << 4

# VM-exit instruction-information field (SDM 28.2.5, Tables 28-9 to 28-15)
INFO_MEM_REG = 1 << 10  # Mem/Reg: 1 = register operand
INFO_INDEX_INVALID, INFO_BASE_INVALID = 1 << 22, 1 << 27
_DESCRIPTOR_IDENTITY = {"sgdt": 0, "sidt": 1, "lgdt": 2, "lidt": 3, "sldt": 0, "str": 1, "lldt": 2, "ltr": 3}
_SCALING = {1: 0, 2: 1, 4: 2, 8: 3}
_ADDRESS_SIZE = {16: 0, 32: 1, 64: 2}


def memory_info(op) -> int:
    """The addressing part every instruction-information layout shares (SDM Tables 28-10 to
    28-15): scaling 1:0, address size 9:7, segment 17:15, index 21:18 with its invalid bit 22,
    base 26:23 with its invalid bit 27. For a register operand only Mem/Reg (bit 10) is set."""
    if not op.memory:
        return INFO_MEM_REG
    info = _ADDRESS_SIZE[op.address_size] << 7 | op.segment << 15
    info |= _SCALING[op.scale] | op.index << 18 if op.index is not None else INFO_INDEX_INVALID
    info |= op.base << 23 if op.base is not None else INFO_BASE_INVALID
    return info


def instruction_information(kind: str, ops: tuple) -> tuple[int, int]:
    """(VM-exit instruction information, exit qualification) for an instruction whose exit
    reports its operands (SDM 28.2.5; the qualification is the memory operand's displacement,
    sign-extended, RIP-relative ones including the next RIP, 0 for a register operand: 28.2.1)."""
    mem = next((op for op in ops if op.memory), None)
    qual = mem.displacement & (1 << 64) - 1 if mem is not None else 0
    if kind in ("rdrand", "rdseed"):  # Table 28-9: destination register 6:3, operand size 12:11
        op = ops[0]
        return op.register << 3 | {2: 0, 4: 1, 8: 2}[op.size] << 11, 0
    if kind in ("sgdt", "sidt", "lgdt", "lidt"):  # Table 28-10
        info = memory_info(mem) & ~INFO_MEM_REG | _DESCRIPTOR_IDENTITY[kind] << 28
        return info | (0 if mem.data16 else 1 << 11), qual  # operand size: 0 16-bit, 1 32-bit
    if kind in ("sldt", "str", "lldt", "ltr"):  # Table 28-11
        op = ops[0]
        info = memory_info(op) | _DESCRIPTOR_IDENTITY[kind] << 28
        return info | (op.register << 3 if not op.memory else 0), qual
    if kind in ("vmread", "vmwrite"):  # Table 28-15: Reg1 6:3 (r/m register), Reg2 31:28 (field)
        rm = ops[0] if kind == "vmread" else ops[1]
        field = ops[1] if kind == "vmread" else ops[0]
        info = memory_info(rm) | field.register << 28
        return info | (rm.register << 3 if not rm.memory else 0), qual
    if kind in ("invept", "invvpid", "invpcid"):  # Table 28-13: Reg2 31:28 (the type register)
        return memory_info(mem) | ops[0].register << 28, qual
    if mem is not None:  # Table 28-14: VMCLEAR, VMPTRLD, VMPTRST, VMXON, XRSTORS, XSAVES
        return memory_info(mem), qual
    return 0, 0


# VM-exit interruption information (SDM 24.9.2, Table 24-19); IDT-vectoring information has
# the same layout (Table 24-20). Types in bits 10:8.
INTR_INFO_VALID, INTR_INFO_DELIVER_CODE = 1 << 31, 1 << 11
INTR_TYPE_EXT_INTR, INTR_TYPE_NMI_INTR, INTR_TYPE_HARD_EXCEPTION = 0, 2, 3
INTR_TYPE_SOFT_INTR, INTR_TYPE_PRIV_SW_EXCEPTION, INTR_TYPE_SOFT_EXCEPTION = 4, 5, 6
_EVENT_EXITS = {"external": EXIT_REASON_EXTERNAL_INTERRUPT, "nmi": EXIT_REASON_EXCEPTION_NMI,
                "init": EXIT_REASON_INIT_SIGNAL, "preemption_timer": EXIT_REASON_PREEMPTION_TIMER,
                "mtf": EXIT_REASON_MONITOR_TRAP_FLAG}
_WINDOW_EXITS = {"interrupt": EXIT_REASON_INTERRUPT_WINDOW, "nmi": EXIT_REASON_NMI_WINDOW}


def interruption_info(vector: int, kind: int, error_code: int | None) -> int:
    """Interruption-information format (SDM Tables 24-19 / 24-20): vector 7:0, type 10:8, error
    code valid 11, valid 31."""
    return vector & 0xFF | (kind & 7) << 8 | (INTR_INFO_DELIVER_CODE if error_code is not None else 0) | INTR_INFO_VALID

# Exit qualification for I/O instructions (SDM Table 28-5)
IO_SIZE_MASK = 0x7  # 0 = 1 byte, 1 = 2 bytes, 3 = 4 bytes
IO_DIRECTION_IN = 1 << 3
IO_STRING = 1 << 4
IO_REP = 1 << 5
IO_IMMEDIATE = 1 << 6
IO_PORT_SHIFT = 16

# Exit qualification for EPT violations (SDM Table 28-7)
EPT_READ, EPT_WRITE, EPT_FETCH = 1 << 0, 1 << 1, 1 << 2
EPT_READABLE, EPT_WRITABLE, EPT_EXECUTABLE = 1 << 3, 1 << 4, 1 << 5
EPT_GLA_VALID = 1 << 7
INTR_INFO_UNBLOCK_NMI = 1 << 12  # "NMI unblocking due to IRET" (interruption info, EPT qualification)
EPT_GLA_FINAL = 1 << 8  # the access was to the final translation, not a paging structure


class VmxExitInfo:
    """The VM-exit information fields a VMM reads after an exit (SDM 25.9)."""

    __slots__ = ("VM_EXIT_INTR_INFO", "VM_EXIT_INTR_ERROR_CODE", "EXIT_REASON", "EXIT_QUALIFICATION", "GUEST_PHYSICAL_ADDRESS",
                 "GUEST_LINEAR_ADDRESS", "VM_EXIT_INSTRUCTION_LEN", "GUEST_RIP", "VMX_INSTRUCTION_INFO",
                 "IDT_VECTORING_INFO_FIELD", "IDT_VECTORING_ERROR_CODE")

    def __init__(self, exit_reason: int, exit_qualification: int = 0, guest_rip: int | None = None,
                 instruction_length: int = 0, guest_physical_address: int = 0,
                 guest_linear_address: int = 0, intr_info: int = 0, intr_error_code: int = 0,
                 instruction_info: int = 0, idt_vectoring_info: int = 0, idt_vectoring_error_code: int = 0) -> None:
        self.VMX_INSTRUCTION_INFO = instruction_info
        self.EXIT_REASON = exit_reason
        self.EXIT_QUALIFICATION = exit_qualification
        self.GUEST_RIP = guest_rip
        self.VM_EXIT_INSTRUCTION_LEN = instruction_length
        self.GUEST_PHYSICAL_ADDRESS = guest_physical_address
        self.GUEST_LINEAR_ADDRESS = guest_linear_address
        self.VM_EXIT_INTR_INFO = intr_info
        self.VM_EXIT_INTR_ERROR_CODE = intr_error_code
        self.IDT_VECTORING_INFO_FIELD = idt_vectoring_info
        self.IDT_VECTORING_ERROR_CODE = idt_vectoring_error_code

    def __repr__(self) -> str:
        return (f"EXIT_REASON={self.EXIT_REASON} ({EXIT_REASONS.get(self.EXIT_REASON & 0xFFFF)}) "
                f"EXIT_QUALIFICATION={self.EXIT_QUALIFICATION:#x}")


_IO_SIZE = {1: 0, 2: 1, 4: 3}
_NAME = {n: f"EXIT_REASON_{name}" for n, name in EXIT_REASONS.items()}


class VmxVendor(X86Vendor):
    name = "intel_vtx"
    cpuid_vendor = b"GenuineIntel"
    hypercall_insn = b"\x0f\x01\xc1"  # VMCALL
    signature = 0x000906A0  # family 6
    brand = "hvsim virtual CPU (Intel VT-x model)"

    def attach(self, vcpu, area):
        from .vmm import VmxGuestContext

        return VmxGuestContext(vcpu, area)

    def invalid_exit(self, reason):
        return Exit(ExitKind.INVALID_STATE, "EXIT_REASON_INVALID_STATE",
                    VmxExitInfo(EXIT_REASON_INVALID_STATE_FAILED_ENTRY), detail=reason)

    def io_exit(self, port, size, is_in, value, rip, insn_len, imm, string=False, rep=False,
                address_size=64, segment=0):
        qual = (_IO_SIZE[size] | (IO_DIRECTION_IN if is_in else 0) | (IO_STRING if string else 0)
                | (IO_REP if rep else 0) | (IO_IMMEDIATE if imm else 0) | (port << IO_PORT_SHIFT))
        return Exit(ExitKind.PORT_IO, "EXIT_REASON_IO_INSTRUCTION",
                    VmxExitInfo(EXIT_REASON_IO_INSTRUCTION, qual, rip, insn_len),
                    port, size, not is_in, value)

    def mmio_exit(self, gpa, size, is_write, value, rip, gla=None):
        # KVM keeps MMIO out of the EPT tables, so an MMIO access is an EPT violation on a
        # not-present entry: no permission bits set, the access type bits say what was tried.
        qual = (EPT_WRITE if is_write else EPT_READ) | EPT_GLA_FINAL
        if gla is not None:
            qual |= EPT_GLA_VALID
        return Exit(ExitKind.MMIO, "EXIT_REASON_EPT_VIOLATION",
                    VmxExitInfo(EXIT_REASON_EPT_VIOLATION, qual, rip, 0, gpa, gla or 0),
                    gpa, size, is_write, value)

    def exception_exit(self, vector, error_code, rip, cr2, vectoring=None, length=0):
        # SDM 28.2.1/28.2.2: reason 0; VM-exit interruption information: vector, type 3 (hardware
        # exception; 6 for #BP/#OF from INT3/INTO, software exceptions; 5 for the #DB of INT1 /
        # ICEBP, a privileged software exception), error-code valid, valid; the exit
        # qualification of a #PF is the faulting linear address (CR2 is not written). An
        # exception raised while delivering another event also records that event as the
        # IDT-vectoring information (SDM 28.2.4); the exit then names no instruction. The
        # VM-exit instruction length is saved for software exceptions and for exits during the
        # delivery of a software interrupt or exception (SDM 28.2.5); RIP is then at the INT.
        kind = 6 if vector in (3, 4) else 5 if vector == 1 and length else 3
        info = vector | kind << 8 | (INTR_INFO_DELIVER_CODE if error_code is not None else 0) | INTR_INFO_VALID
        idt_info = idt_code = 0
        if vectoring is not None:
            v_vector, v_code, v_type = vectoring
            idt_info, idt_code = interruption_info(v_vector, v_type, v_code), v_code or 0
            rip = None
        return Exit(ExitKind.EXCEPTION, "EXIT_REASON_EXCEPTION_NMI",
                    VmxExitInfo(EXIT_REASON_EXCEPTION_NMI, cr2 if vector == 14 else 0, rip, length,
                                intr_info=info, intr_error_code=error_code or 0,
                                idt_vectoring_info=idt_info, idt_vectoring_error_code=idt_code),
                    cr2 if vector == 14 else 0, size=length if vectoring is None else 0, vector=vector,
                    value=error_code)

    @staticmethod
    def event_exit(kind: str, vector: int = 0, acknowledged: bool = False) -> Exit:
        """An event the controls make exit (SDM 25.2): external interrupt (reason 1; with
        "acknowledge interrupt on exit" the interruption information holds its vector, type 0),
        NMI (reason 0, type 2, vector 2), INIT (3), VMX-preemption timer (52), MTF (37). None
        of them names an instruction: GUEST_RIP is the boundary where it was recognised."""
        reason = _EVENT_EXITS[kind]
        info = 0
        if kind == "nmi":
            info = interruption_info(2, INTR_TYPE_NMI_INTR, None)
        elif kind == "external" and acknowledged:
            info = interruption_info(vector, INTR_TYPE_EXT_INTR, None)
        return Exit(ExitKind.EVENT, _NAME[reason], VmxExitInfo(reason, intr_info=info), vector=vector)

    @staticmethod
    def window_exit(kind: str) -> Exit:
        """Interrupt-window (7) or NMI-window (8) exiting (SDM 25.2): before the first
        instruction at which the guest could take an interrupt / a virtual NMI."""
        reason = _WINDOW_EXITS[kind]
        return Exit(ExitKind.INTERRUPT_WINDOW, _NAME[reason], VmxExitInfo(reason))

    def instruction_exit(self, kind, rip, insn_len, operand):
        if kind == "task_switch":
            # SDM Table 28-2 (exit qualification for task switches): the new TSS's selector in
            # 15:0, the source in 31:30 (0 CALL, 1 IRET, 2 JMP, 3 task gate in the IDT).
            source, selector = operand[:2]
            qual = selector & 0xFFFF | TASK_SWITCH_SOURCES[source] << 30
            return Exit(ExitKind.INSTRUCTION, "EXIT_REASON_TASK_SWITCH",
                        VmxExitInfo(EXIT_REASON_TASK_SWITCH, qual, rip, insn_len))
        if kind in ("mov_to_cr", "mov_from_cr", "clts", "lmsw"):
            # SDM Table 28-3: CR number 3:0, access type 5:4, LMSW operand type 6, GPR 11:8 (MOV
            # CR only), LMSW source data 31:16; LMSW from memory also reports its linear address.
            gla = 0
            if kind in ("mov_to_cr", "mov_from_cr"):
                cr, gpr, _value = operand
                qual = cr | (CR_MOV_TO if kind == "mov_to_cr" else CR_MOV_FROM) << 4 | gpr << 8
            elif kind == "clts":
                qual = CR_CLTS << 4
            else:
                _ops, linear, source = operand
                qual = CR_LMSW << 4 | (CR_LMSW_MEMORY if linear is not None else 0) | source << CR_LMSW_SOURCE_SHIFT
                gla = linear or 0
            return Exit(ExitKind.INSTRUCTION, "EXIT_REASON_CR_ACCESS",
                        VmxExitInfo(EXIT_REASON_CR_ACCESS, qual, rip, insn_len, guest_linear_address=gla))
        if kind in ("mov_to_dr", "mov_from_dr"):
            dr, gpr = operand
            qual = dr | (DR_DIRECTION_FROM if kind == "mov_from_dr" else 0) | gpr << 8
            return Exit(ExitKind.INSTRUCTION, "EXIT_REASON_DR_ACCESS",
                        VmxExitInfo(EXIT_REASON_DR_ACCESS, qual, rip, insn_len))
        reason = _INSTRUCTION_REASONS[kind]
        info = 0
        if kind == "invlpg":
            qual = operand[0]  # the linear-address operand (SDM 28.2.1)
        elif kind == "mwait":
            qual = int(bool(operand and operand[0]))  # bit 0: the monitoring hardware is armed
        elif len(operand) == 3 and isinstance(operand[0], tuple):  # (operands, linear, value)
            info, qual = instruction_information(kind, operand[0])
        else:
            qual = 0
        return Exit(ExitKind.INSTRUCTION, f"EXIT_REASON_{EXIT_REASONS[reason]}",
                    VmxExitInfo(reason, qual, rip, insn_len, instruction_info=info))

    @staticmethod
    def nmi_unblocked_by_iret(exit):
        """SDM 28.2.3 / Table 28-7: "NMI unblocking due to IRET", bit 12 of the VM-exit
        interruption information (an exception that is not #DF and was not raised while
        delivering an event) or of an EPT violation's / PML-full exit qualification: the IRET
        that faulted had ended blocking by NMI (virtual-NMI blocking with virtual NMIs), and the
        interruptibility state was saved with it clear (KVM's vmx_recover_nmi_blocking sets it
        again before the IRET is retried)."""
        raw = exit.raw
        if raw.EXIT_REASON == EXIT_REASON_EXCEPTION_NMI and not raw.IDT_VECTORING_INFO_FIELD:
            raw.VM_EXIT_INTR_INFO |= INTR_INFO_UNBLOCK_NMI
        elif raw.EXIT_REASON in (EXIT_REASON_EPT_VIOLATION, EXIT_REASON_PML_FULL):
            raw.EXIT_QUALIFICATION |= INTR_INFO_UNBLOCK_NMI

    def stage2_exit(self, fault, rip):
        """An EPT violation (SDM 29.3.3.2; qualification Table 28-7: the access in bits 2:0, what
        the translation allows in 5:3, whether a linear address caused it in 7 and whether that
        was the final translation (8) rather than a paging-structure access) or an EPT
        misconfiguration (29.3.3.1; no qualification). Both report the guest-physical address."""
        if getattr(fault, "apic_access", None) is not None:
            # a fetch from the APIC-access page: an APIC-access exit, offset and type 2 (SDM 30.4.1)
            return Exit(ExitKind.STAGE2_FAULT, "EXIT_REASON_APIC_ACCESS",
                        VmxExitInfo(44, fault.gpa & 0xFFF | 2 << 12), fault.gpa, 0, False, detail=fault.detail)
        if fault.pml_full:  # SDM 28.2.1: no qualification but bit 12 (NMI unblocking), no address
            return Exit(ExitKind.STAGE2_FAULT, "EXIT_REASON_PML_FULL", VmxExitInfo(EXIT_REASON_PML_FULL, 0),
                        fault.gpa, 0, fault.write, detail=fault.detail)
        if fault.misconfig:
            return Exit(ExitKind.STAGE2_FAULT, "EXIT_REASON_EPT_MISCONFIG",
                        VmxExitInfo(EXIT_REASON_EPT_MISCONFIG, 0, None, 0, fault.gpa),
                        fault.gpa, 0, fault.write, detail=fault.detail)
        qual = EPT_FETCH if fault.fetch else EPT_WRITE if fault.write else EPT_READ
        qual |= (fault.allowed & 7) << 3
        if fault.gla is not None:
            qual |= EPT_GLA_VALID | (0 if fault.walk else EPT_GLA_FINAL)
        return Exit(ExitKind.STAGE2_FAULT, "EXIT_REASON_EPT_VIOLATION",
                    VmxExitInfo(EXIT_REASON_EPT_VIOLATION, qual, None, 0, fault.gpa, fault.gla or 0),
                    fault.gpa, 0, fault.write, detail=fault.detail)

    def cpuid_exit(self, rip):
        return Exit(ExitKind.CPUID, "EXIT_REASON_CPUID", VmxExitInfo(EXIT_REASON_CPUID, 0, rip, 2))

    def hlt_exit(self, rip):
        # The engine stops after the HLT; the exit reports the HLT itself (length 1).
        return Exit(ExitKind.HALT, "EXIT_REASON_HLT", VmxExitInfo(EXIT_REASON_HLT, 0, rip - 1, 1))

    def hypercall_exit(self, rip):
        return Exit(ExitKind.HYPERCALL, "EXIT_REASON_VMCALL", VmxExitInfo(EXIT_REASON_VMCALL, 0, rip, 3))

    def msr_exit(self, msr, is_write, value, rip, insn_len):
        # RDMSR/WRMSR exits have no qualification; the MSR is in the guest's ECX (SDM 26.1.3).
        if is_write:
            return Exit(ExitKind.SYSREG, "EXIT_REASON_MSR_WRITE",
                        VmxExitInfo(EXIT_REASON_MSR_WRITE, 0, rip, insn_len), msr, 8, True, value)
        return Exit(ExitKind.SYSREG, "EXIT_REASON_MSR_READ",
                    VmxExitInfo(EXIT_REASON_MSR_READ, 0, rip, insn_len), msr, 8, False, None)

    def triple_fault_exit(self, detail):
        from hvsim.core.vm import STATUS_GUEST_CRASH

        return Exit(ExitKind.SHUTDOWN, "EXIT_REASON_TRIPLE_FAULT",
                    VmxExitInfo(EXIT_REASON_TRIPLE_FAULT), value=STATUS_GUEST_CRASH,
                    detail=f"guest crash: {detail}")

    def cpuid_leaf(self, leaf, subleaf, vcpu_index, vcpus):
        return cpuid(leaf, subleaf, self.cpuid_vendor, self.signature, self.brand, vcpu_index, vcpus)
