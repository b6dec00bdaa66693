"""What differs between the two x86 vendors, as one table of operations (KVM's kvm_x86_ops).

``VmxVendor`` (plugins/intel_vtx/exits.py) and ``SvmVendor`` (plugins/amd_svm/exits.py) fill it
in: how each exit is recorded (VMX exit reason + qualification, SVM EXITCODE + EXITINFO1/2),
which instruction is the hypercall, and what CPUID says about the processor.
"""

from __future__ import annotations

from hvsim.core.exits import Exit


class X86Vendor:
    """The vendor half of an x86 vCPU. Every method returns a filled-in :class:`Exit`."""

    name: str
    cpuid_vendor: bytes  # 12 bytes: b"GenuineIntel" / b"AuthenticAMD"
    hypercall_insn: bytes  # VMCALL 0F 01 C1 / VMMCALL 0F 01 D9

    def attach(self, vcpu, area: int):
        """The vendor's per-vCPU hypervisor structures at host-physical ``area`` (32 KiB), as an
        object with ``record(raw)`` (every exit), ``vmrun() -> str | None`` (entering the
        engine; a string is why the entry failed), ``vmexit()`` (leaving it) and ``io_check``
        (None when every port access exits, else ``check(port, size) -> bool``, set at each
        entry from the I/O controls), ``msr_check`` and ``exception_check(vector, error_code)`` in
        the same way, ``hlt_exits`` / ``cpuid_exits``, ``intercepts(kind, info)`` for the other
        sensitive instructions (True, False, or the name of a more precise exit),
        ``passthrough(kind, info, rip, length)`` for what one does without an exit where the
        engine cannot (True: done, False: the engine runs it or #UD, None: RIP moved),
        ``exits_before_faults`` (the kinds whose exit comes before the #UD/#GP checks), and
        optionally ``after_exit()`` (VMCS fields that take effect without a re-entry); or None."""
        return None

    def io_exit(self, port: int, size: int, is_in: bool, value: int | None, rip: int,
                insn_len: int, imm: bool, string: bool = False, rep: bool = False,
                address_size: int = 64, segment: int = 0) -> Exit:
        raise NotImplementedError

    def mmio_exit(self, gpa: int, size: int, is_write: bool, value: int | None, rip: int) -> Exit:
        raise NotImplementedError

    def cpuid_exit(self, rip: int) -> Exit:
        raise NotImplementedError

    def exception_exit(self, vector: int, error_code: int | None, rip: int, cr2: int, vectoring=None,
                       length: int = 0) -> Exit:
        raise NotImplementedError

    def nmi_unblocked_by_iret(self, exit: Exit) -> None:
        """``exit`` is for a fault of an IRET that had ended blocking by NMI: VMX says so in its
        record; SVM has no such bit (a VMM intercepts IRET to know)."""

    def instruction_exit(self, kind: str, rip: int, insn_len: int, operand: tuple) -> Exit:
        """An intercepted sensitive instruction: ``rdtsc``, ``rdtscp``, ``invlpg``, ``wbinvd``,
        ``invd``, ``pause``, ``mov_to_cr``/``mov_from_cr`` (CR, GPR, value), ``clts``, ``lmsw``,
        ``smsw``, ``mov_to_dr``/``mov_from_dr`` (DR, GPR), the descriptor-table instructions,
        ``xsetbv``, ``rdpmc``, ``rdrand``, ``rdseed``, ``getsec``, ``monitor``, ``mwait``,
        ``invpcid``, ``xsaves``, ``xrstors``, ``icebp``, ``rdpru``, ``intn`` (vector), SVM's
        ``pushf``/``popf``/``iret``/``cr0_sel_write``/``mwait_conditional``/``efer_write_trap``,
        and the VMX/SVM instructions. Instructions with decoded operands (plugins/x86/operands.py)
        get ``(operands, linear address or None, LMSW source / INVPCID type)``."""
        raise NotImplementedError

    def hlt_exit(self, rip: int) -> Exit:
        raise NotImplementedError

    def hypercall_exit(self, rip: int) -> Exit:
        raise NotImplementedError

    def msr_exit(self, msr: int, is_write: bool, value: int | None, rip: int, insn_len: int) -> Exit:
        raise NotImplementedError

    def stage2_exit(self, fault, rip: int) -> Exit:
        """A :class:`hvsim.core.mmu.Stage2Fault` as the vendor reports it (EPT violation or
        misconfiguration; #VMEXIT(NPF)). ``rip`` is the faulting instruction, not completed."""
        raise NotImplementedError

    def triple_fault_exit(self, detail: str) -> Exit:
        raise NotImplementedError

    def cpuid_leaf(self, leaf: int, subleaf: int, vcpu_index: int, vcpus: int) -> tuple[int, int, int, int]:
        raise NotImplementedError
