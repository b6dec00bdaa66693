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

EXIT_REASON_EXCEPTION_NMI = 0
EXIT_REASON_TRIPLE_FAULT = 2
EXIT_REASON_CPUID = 10
EXIT_REASON_HLT = 12
EXIT_REASON_VMCALL = 18
EXIT_REASON_IO_INSTRUCTION = 30
EXIT_REASON_CR_ACCESS = 28
_INSTRUCTION_REASONS = {"rdtsc": 16, "rdtscp": 51, "invlpg": 14, "wbinvd": 54, "invd": 13, "pause": 40,
                        # VMX instructions executed by the guest (SDM 26.1.2: they always exit)
                        "vmclear": 19, "vmlaunch": 20, "vmptrld": 21, "vmptrst": 22, "vmread": 23,
                        "vmresume": 24, "vmwrite": 25, "vmxoff": 26, "vmxon": 27, "invept": 50,
                        "invvpid": 53, "vmfunc": 59}
EXIT_REASON_MSR_READ = 31
EXIT_REASON_MSR_WRITE = 32
EXIT_REASON_EPT_VIOLATION = 48
EXIT_REASON_EPT_MISCONFIG = 49
EXIT_REASON_INVALID_STATE_FAILED_ENTRY = 33 | (1 << 31)  # bit 31: VM-entry failure (SDM 27.8)

# VM-exit interruption information (SDM 24.9.2, Table 24-19)
INTR_INFO_VALID, INTR_INFO_DELIVER_CODE = 1 << 31, 1 << 11

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
EPT_GLA_FINAL = 1 << 8  # the access was to the final translation, not a paging structure


class VmxExitInfo:
    """The VM-exit information fields a VMM reads after an exit (SDM 25.9)."""

    __slots__ = ("VM_EXIT_INTR_INFO", "VM_EXIT_INTR_ERROR_CODE", "EXIT_REASON", "EXIT_QUALIFICATION", "GUEST_PHYSICAL_ADDRESS",
                 "GUEST_LINEAR_ADDRESS", "VM_EXIT_INSTRUCTION_LEN", "GUEST_RIP")

    def __init__(self, exit_reason: int, exit_qualification: int = 0, guest_rip: int | None = None,
                 instruction_length: int = 0, guest_physical_address: int = 0,
                 guest_linear_address: int = 0, intr_info: int = 0, intr_error_code: int = 0) -> None:
        self.EXIT_REASON = exit_reason
        self.EXIT_QUALIFICATION = exit_qualification
        self.GUEST_RIP = guest_rip
        self.VM_EXIT_INSTRUCTION_LEN = instruction_length
        self.GUEST_PHYSICAL_ADDRESS = guest_physical_address
        self.GUEST_LINEAR_ADDRESS = guest_linear_address
        self.VM_EXIT_INTR_INFO = intr_info
        self.VM_EXIT_INTR_ERROR_CODE = intr_error_code

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

    def exception_exit(self, vector, error_code, rip, cr2):
        # SDM 28.2.1/28.2.2: reason 0; VM-exit interruption information: vector, type 3 (hardware
        # exception; 6 for #BP/#OF, software exceptions), error-code valid, valid; the exit
        # qualification of a #PF is the faulting linear address (CR2 is not written).
        kind = 6 if vector in (3, 4) else 3
        info = vector | kind << 8 | (INTR_INFO_DELIVER_CODE if error_code is not None else 0) | INTR_INFO_VALID
        return Exit(ExitKind.EXCEPTION, "EXIT_REASON_EXCEPTION_NMI",
                    VmxExitInfo(EXIT_REASON_EXCEPTION_NMI, cr2 if vector == 14 else 0, rip, 0,
                                intr_info=info, intr_error_code=error_code or 0),
                    cr2 if vector == 14 else 0, vector=vector, value=error_code)

    def instruction_exit(self, kind, rip, insn_len, operand):
        if kind in ("mov_to_cr", "mov_from_cr"):
            # SDM Table 28-3: CR number 3:0, access type 5:4 (0 MOV to CR, 1 MOV from CR), GPR 11:8.
            cr, gpr, _value = operand
            qual = cr | (0 if kind == "mov_to_cr" else 1) << 4 | gpr << 8
            return Exit(ExitKind.INSTRUCTION, "EXIT_REASON_CR_ACCESS",
                        VmxExitInfo(EXIT_REASON_CR_ACCESS, qual, rip, insn_len))
        reason = _INSTRUCTION_REASONS[kind]
        qual = operand[0] if kind == "invlpg" else 0  # INVLPG: the linear-address operand (SDM 28.2.1)
        return Exit(ExitKind.INSTRUCTION, f"EXIT_REASON_{EXIT_REASONS[reason]}", VmxExitInfo(reason, qual, rip, insn_len))

    def stage2_exit(self, fault, rip):
        """An EPT violation (SDM 29.3.3.2; qualification Table 28-7: the access in bits 2:0, what
        the translation allows in 5:3, whether a linear address caused it in 7 and whether that
        was the final translation (8) rather than a paging-structure access) or an EPT
        misconfiguration (29.3.3.1; no qualification). Both report the guest-physical address."""
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
