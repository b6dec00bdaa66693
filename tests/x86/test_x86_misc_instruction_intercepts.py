"""XSETBV, RDPMC, RDRAND/RDSEED, GETSEC, MONITOR/MWAIT, INVPCID, XSAVES and the VMX instructions'
instruction information (SDM 26.1.2-26.1.3, 28.2.5; APM 15.9-15.14): each exits under its
control with the vendor's record; without it the guest sees what hvsim's processor does (the
engine runs it, or #UD/#GP where CPUID does not offer it)."""

from __future__ import annotations

import pytest
from unicorn import x86_const as X

from guestlib import X86_STACK, x86_64
from intercept_helpers import END, UD_MARK, X86_DATA, Vmm, boot, code, handler, msrs, set_controls, vmwrite

RAX, RCX, RDX, RBX, RSI = 0, 1, 2, 3, 6
FAULT_END = f"mov al, [{UD_MARK:#x}]\nout 0xf4, al\nhlt"  # status = vector << 1 | 1 (0: no fault)


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


def faults(src, skip):
    """``src`` then FAULT_END, with #UD, #DB and #GP handlers that record the vector and step
    ``skip`` bytes past a faulting instruction."""
    return (f"{src}\n{FAULT_END}\nud:\n{handler(6, skip)}\ngp:\n{handler(13, skip)}\ndb:\n{handler(1)}",
            {6: "ud", 13: "gp", 1: "db"})


XSETBV = f"""
    mov rax, cr4
    or rax, {1 << 18}
    mov cr4, rax
    xor ecx, ecx
    xor edx, edx
    mov eax, 3
    xsetbv
    xor eax, eax
    xgetbv
    mov [{X86_DATA:#x}], eax
    {END}"""


def test_xsetbv_exits_on_vmx_always_and_on_svm_when_intercepted(make_vm, hvsim_pm, arch):
    vmm = Vmm()  # not emulated: XSETBV completes in the engine
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, XSETBV)
    if arch == "amd_svm":
        vm.run(timeout=10)
        assert not vmm.seen and vm.memory.read_u32(X86_DATA) == 3
        vm = boot(make_vm, arch, XSETBV)
        vm.vcpus[0].context.vmcb.set_intercept("XSETBV")
    assert vm.run(timeout=10).status == 1
    (exit, rip, _), = vmm.seen
    assert vm.memory.read(rip, 3) == b"\x0f\x01\xd1" and vm.memory.read_u32(X86_DATA) == 3
    if arch == "intel_vtx":
        assert exit.raw.EXIT_REASON == 55 and exit.raw.VM_EXIT_INSTRUCTION_LEN == 3
    else:
        assert exit.raw.EXITCODE == 0x8D and exit.raw.NRIP == rip + 3


def test_xsetbv_without_cr4_osxsave_is_ud_before_any_exit(make_vm, hvsim_pm, arch):
    vmm = Vmm()
    hvsim_pm.register(vmm)
    src, gates = faults("xor ecx, ecx\nmov eax, 3\nxor edx, edx\nxsetbv", 3)
    vm = boot(make_vm, arch, src, gates)
    if arch == "amd_svm":
        vm.vcpus[0].context.vmcb.set_intercept("XSETBV")
    assert vm.run(timeout=10).status == 6 << 1 | 1
    assert not vmm.seen


def test_cpuid_offers_xsave_and_reflects_cr4_osxsave(make_vm, arch):
    vm = boot(make_vm, arch, f"""
        mov eax, 1
        cpuid
        mov [{X86_DATA:#x}], ecx
        mov rax, cr4
        or rax, {1 << 18}
        mov cr4, rax
        mov eax, 1
        cpuid
        mov [{X86_DATA + 4:#x}], ecx
        mov eax, 0xd
        xor ecx, ecx
        cpuid
        mov [{X86_DATA + 8:#x}], eax
        {END}""")
    assert vm.run(timeout=10).status == 1
    before, after = vm.memory.read_u32(X86_DATA), vm.memory.read_u32(X86_DATA + 4)
    assert before & 1 << 26 and not before & 1 << 27 and after & 1 << 27  # XSAVE; OSXSAVE follows CR4
    assert not before & 1 << 3  # no MONITOR/MWAIT
    assert vm.memory.read_u32(X86_DATA + 8) == 3  # XCR0 may enable x87 and SSE


def test_rdpmc_exits_when_intercepted_else_gp_with_no_counters(make_vm, hvsim_pm, arch):
    def emulate(vcpu, exit):
        vcpu.regs.write(X.UC_X86_REG_RAX, 0x77)
        vcpu.regs.write(X.UC_X86_REG_RDX, 0)
        return True

    vmm = Vmm(emulate)
    hvsim_pm.register(vmm)
    src, gates = faults(f"xor ecx, ecx\nrdpmc\nmov [{X86_DATA:#x}], eax", 2)
    vm = boot(make_vm, arch, src, gates)
    assert vm.run(timeout=10).status == 13 << 1 | 1  # CPUID leaf 0AH reports no counter: #GP(0)
    vm = boot(make_vm, arch, src, gates)
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        set_controls(vcpu, proc=msrs.CPU_BASED_RDPMC_EXITING)
    else:
        vcpu.context.vmcb.set_intercept("RDPMC")
    assert vm.run(timeout=10).status == 1 and vm.memory.read_u32(X86_DATA) == 0x77
    (exit, rip, _), = vmm.seen
    assert code(exit, arch) == (15 if arch == "intel_vtx" else 0x6F)
    if arch == "amd_svm":
        assert exit.raw.NRIP == rip + 2


@pytest.mark.parametrize("insn,reason,control", [("rdrand", 57, "SECONDARY_EXEC_RDRAND_EXITING"),
                                                 ("rdseed", 61, "SECONDARY_EXEC_RDSEED_EXITING")])
@pytest.mark.parametrize("reg,number,size", [("rsi", RSI, 2), ("ecx", RCX, 1), ("dx", RDX, 0)])
def test_vmx_rdrand_rdseed_exit_with_the_destination_in_the_instruction_information(
        make_vm, hvsim_pm, insn, reason, control, reg, number, size):
    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, "intel_vtx", f"{insn} {reg}\n{END}")
    vm.run(timeout=10)
    assert not vmm.seen  # not intercepted: the engine answers
    vm = boot(make_vm, "intel_vtx", f"{insn} {reg}\n{END}")
    set_controls(vm.vcpus[0], proc2=getattr(msrs, control))
    assert vm.run(timeout=10).status == 1
    (exit, _, _), = vmm.seen
    assert exit.raw.EXIT_REASON == reason and exit.raw.EXIT_QUALIFICATION == 0
    assert exit.raw.VMX_INSTRUCTION_INFO == number << 3 | size << 11  # Table 28-9


def test_cpuid_offers_rdrand_and_rdseed_which_the_engine_runs(make_vm, arch):
    vm = boot(make_vm, arch, f"""
        mov eax, 7
        xor ecx, ecx
        cpuid
        mov [{X86_DATA:#x}], ebx
        mov eax, 1
        cpuid
        mov [{X86_DATA + 4:#x}], ecx
        rdseed rax
        setc byte ptr [{X86_DATA + 8:#x}]
        {END}""")
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u32(X86_DATA) & 1 << 18 and vm.memory.read_u32(X86_DATA + 4) & 1 << 30
    assert vm.memory.read(X86_DATA + 8, 1) == b"\x01"  # CF = 1: a random value was delivered


def test_getsec_without_cr4_smxe_is_ud(make_vm, hvsim_pm, arch):
    """GETSEC exits unconditionally in VMX non-root operation, but only once CR4.SMXE = 1
    (#UD comes first), and hvsim's processor has no SMX (IA32_VMX_CR4_FIXED1 bit 14 clear)."""
    vmm = Vmm()
    hvsim_pm.register(vmm)
    src, gates = faults("getsec", 2)
    vm = boot(make_vm, arch, src, gates)
    assert vm.run(timeout=10).status == 6 << 1 | 1 and not vmm.seen


MONITOR_MWAIT = f"""
    mov rax, {X86_DATA:#x}
    xor ecx, ecx
    xor edx, edx
    monitor
    xor eax, eax
    mwait"""


def test_monitor_mwait_are_ud_when_not_intercepted(make_vm, hvsim_pm, arch):
    vmm = Vmm()
    hvsim_pm.register(vmm)
    src, gates = faults(MONITOR_MWAIT, 3)
    vm = boot(make_vm, arch, src, gates)
    assert vm.run(timeout=10).status == 6 << 1 | 1 and not vmm.seen


def test_monitor_mwait_exit_when_intercepted(make_vm, hvsim_pm, arch):
    """VMX: reasons 39 and 36, MWAIT's qualification bit 0 = the monitor is armed (by the
    MONITOR the VMM emulated). SVM: 0x8A and 0x8B."""
    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, f"{MONITOR_MWAIT}\n{END}")
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        set_controls(vcpu, proc=msrs.CPU_BASED_MONITOR_EXITING | msrs.CPU_BASED_MWAIT_EXITING)
    else:
        vcpu.context.vmcb.set_intercept("MONITOR")
        vcpu.context.vmcb.set_intercept("MWAIT")
    assert vm.run(timeout=10).status == 1
    (monitor, mrip, _), (mwait, wrip, _) = vmm.seen
    if arch == "intel_vtx":
        assert (monitor.raw.EXIT_REASON, mwait.raw.EXIT_REASON) == (39, 36)
        assert mwait.raw.EXIT_QUALIFICATION == 1 and mwait.raw.VM_EXIT_INSTRUCTION_LEN == 3
    else:
        assert (monitor.raw.EXITCODE, mwait.raw.EXITCODE) == (0x8A, 0x8B)
        assert (monitor.raw.NRIP, mwait.raw.NRIP) == (mrip + 3, wrip + 3)


def test_svm_mwait_conditional_intercepts_only_with_the_monitor_armed(make_vm, hvsim_pm):
    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    src, gates = faults("xor eax, eax\nxor ecx, ecx\nmwait", 3)
    vm = boot(make_vm, "amd_svm", src, gates)
    vmcb = vm.vcpus[0].context.vmcb
    vmcb.set_intercept("MONITOR")
    vmcb.set_intercept("MWAIT_CONDITIONAL")
    assert vm.run(timeout=10).status == 6 << 1 | 1  # not armed: no intercept, and the engine has no MWAIT
    assert not vmm.seen
    vm = boot(make_vm, "amd_svm", f"{MONITOR_MWAIT}\n{END}")
    vmcb = vm.vcpus[0].context.vmcb
    vmcb.set_intercept("MONITOR")
    vmcb.set_intercept("MWAIT_CONDITIONAL")
    assert vm.run(timeout=10).status == 1
    assert [e.raw.EXITCODE for e, *_ in vmm.seen] == [0x8A, 0x8C]
    assert vmm.seen[1][0].reason == "VMEXIT_MWAIT_CONDITIONAL"


INVPCID = f"""
    mov qword ptr [{X86_DATA:#x}], 0
    mov qword ptr [{X86_DATA + 8:#x}], 0
    mov rbx, {X86_DATA - 0x10:#x}
    mov rdx, 2
    invpcid rdx, [rbx + 0x10]"""


def test_vmx_invpcid_is_ud_unless_enabled(make_vm, hvsim_pm):
    vmm = Vmm()
    hvsim_pm.register(vmm)
    src, gates = faults(INVPCID, 6)
    vm = boot(make_vm, "intel_vtx", src, gates)
    set_controls(vm.vcpus[0], proc=msrs.CPU_BASED_INVLPG_EXITING)
    assert vm.run(timeout=10).status == 6 << 1 | 1 and not vmm.seen


def test_vmx_invpcid_exits_with_invlpg_exiting_and_runs_without(make_vm, hvsim_pm):
    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    src, gates = faults(INVPCID, 6)
    vm = boot(make_vm, "intel_vtx", src, gates)
    set_controls(vm.vcpus[0], proc2=msrs.SECONDARY_EXEC_ENABLE_INVPCID)
    assert vm.run(timeout=10).status == 1 and not vmm.seen  # enabled, not exiting: it runs
    vm = boot(make_vm, "intel_vtx", src, gates)
    set_controls(vm.vcpus[0], proc=msrs.CPU_BASED_INVLPG_EXITING, proc2=msrs.SECONDARY_EXEC_ENABLE_INVPCID)
    assert vm.run(timeout=10).status == 1
    (exit, _, _), = vmm.seen
    info = exit.raw.VMX_INSTRUCTION_INFO
    assert exit.raw.EXIT_REASON == 58 and exit.raw.EXIT_QUALIFICATION == 0x10
    assert info >> 28 == RDX and info >> 23 & 0xF == RBX and info >> 22 & 1 and info >> 7 & 7 == 2  # Table 28-13


def test_vmx_invpcid_of_an_unknown_type_is_gp(make_vm, hvsim_pm):
    src, gates = faults(INVPCID.replace("mov rdx, 2", "mov rdx, 4"), 6)
    vm = boot(make_vm, "intel_vtx", src, gates)
    set_controls(vm.vcpus[0], proc2=msrs.SECONDARY_EXEC_ENABLE_INVPCID)
    assert vm.run(timeout=10).status == 13 << 1 | 1


def test_vmx_xsaves_exits_by_the_xss_exiting_bitmap(make_vm, hvsim_pm):
    """SDM 26.1.3: XSAVES exits when EDX:EAX AND IA32_XSS AND the XSS-exiting bitmap is not 0;
    otherwise it would run, which the engine cannot (and CPUID does not offer XSAVES): #UD."""
    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    src = f"mov rax, cr4\nor rax, {1 << 18}\nmov cr4, rax\nmov eax, 0x100\nxor edx, edx\nmov rbx, {X86_DATA:#x}\nxsaves [rbx + 0x40]"
    full, gates = faults(src, 4)
    for xss, expected in ((0, 6 << 1 | 1), (0x100, 1)):
        vm = boot(make_vm, "intel_vtx", full, gates)
        vcpu = vm.vcpus[0]
        vcpu.msrs[0xDA0] = xss  # IA32_XSS as a VMM's MSR model holds it
        set_controls(vcpu, proc2=msrs.SECONDARY_EXEC_ENABLE_XSAVES)
        vmwrite(vcpu, XSS_EXIT_BITMAP=0x100)
        assert vm.run(timeout=10).status == expected
    (exit, _, _), = vmm.seen
    info = exit.raw.VMX_INSTRUCTION_INFO
    assert exit.raw.EXIT_REASON == 63 and exit.raw.EXIT_QUALIFICATION == 0x40  # Table 28-14
    assert info >> 22 & 1 and info >> 23 & 0xF == RBX and not info >> 27 & 1 and info >> 15 & 7 == 3  # DS


def test_vmx_instructions_exit_with_their_instruction_information(make_vm, hvsim_pm):
    """Tables 28-14 and 28-15: VMPTRLD's memory operand; VMREAD's register form (Reg1 = the
    destination, Reg2 = the field encoding); VMWRITE's memory form (Reg2 = the encoding)."""
    vmm = Vmm(lambda vcpu, exit: True)  # emulated: no #UD
    hvsim_pm.register(vmm)
    vm = boot(make_vm, "intel_vtx", f"""
        mov rbx, {X86_DATA:#x}
        vmptrld [rbx + 8]
        vmread rax, rcx
        vmwrite rdx, qword ptr [rbx + rsi*2]
        {END}""")
    assert vm.run(timeout=10).status == 1
    (ptrld, _, _), (read, _, _), (write, _, _) = vmm.seen
    assert (ptrld.raw.EXIT_REASON, read.raw.EXIT_REASON, write.raw.EXIT_REASON) == (21, 23, 25)
    info = ptrld.raw.VMX_INSTRUCTION_INFO
    assert ptrld.raw.EXIT_QUALIFICATION == 8 and info >> 23 & 0xF == RBX and info >> 22 & 1 and not info >> 10 & 1
    info = read.raw.VMX_INSTRUCTION_INFO
    assert info >> 10 & 1 and info >> 3 & 0xF == RAX and info >> 28 == RCX and read.raw.EXIT_QUALIFICATION == 0
    info = write.raw.VMX_INSTRUCTION_INFO
    assert not info >> 10 & 1 and info >> 28 == RDX and info >> 18 & 0xF == RSI and info & 3 == 1


def test_svm_invpcid_exit_reports_the_descriptor_address_and_the_type(make_vm, hvsim_pm):
    """With decode assists, EXITINFO1 is the INVPCID descriptor's linear address and EXITINFO2
    the type operand; without the intercept the guest sees #UD (CPUID offers no INVPCID)."""
    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    src, gates = faults(INVPCID, 6)
    vm = boot(make_vm, "amd_svm", src, gates)
    assert vm.run(timeout=10).status == 6 << 1 | 1 and not vmm.seen
    vm = boot(make_vm, "amd_svm", src, gates)
    vm.vcpus[0].context.vmcb.set_intercept("INVPCID")
    assert vm.run(timeout=10).status == 1
    (exit, rip, _), = vmm.seen
    assert (exit.raw.EXITCODE, exit.raw.EXITINFO1, exit.raw.EXITINFO2) == (0xA2, X86_DATA, 2)
    assert exit.raw.NRIP == rip + 6


@pytest.mark.parametrize("paging", ["nested", "shadow"])
@pytest.mark.parametrize("invpcid_type", [0, 2, 3])
def test_vmx_invpcid_run_for_the_guest_drops_the_cached_translation(make_vm, hvsim_pm, invpcid_type, paging):
    """Enabled and not exiting, INVPCID does what its type says (SDM Vol. 2A): type 0 the one
    address of the descriptor, 2 and 3 every context; the changed PTE is then seen. Under
    shadow paging INVLPG exiting is on, so INVPCID exits (58) and the VMM completes it; there
    the VMM's write protection of the page table already showed the new PTE before it."""
    from test_x86_memory_virtualization import FRAME_A, FRAME_B, GUEST_PT, P, RW, WINDOW, paging_on

    vmm = Vmm()
    hvsim_pm.register(vmm)
    desc = X86_DATA + 0x100
    vm = make_vm("intel_vtx", **({"paging": "shadow"} if paging == "shadow" else {}))
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222
        mov qword ptr [{desc:#x}], 0
        mov rax, {WINDOW:#x}
        mov qword ptr [{desc + 8:#x}], rax
        {paging_on({0: FRAME_A | P | RW})}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov qword ptr [{GUEST_PT:#x}], {FRAME_B | P | RW:#x}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 8:#x}], rax
        mov rdx, {invpcid_type}
        mov rbx, {desc:#x}
        invpcid rdx, [rbx]
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 16:#x}], rax
        {END}"""))
    set_controls(vm.vcpus[0], proc2=msrs.SECONDARY_EXEC_ENABLE_INVPCID)
    assert vm.run(timeout=10).status == 1
    stale = 0x1111 if paging == "nested" else 0x2222
    assert [vm.memory.read_u64(X86_DATA + 8 * i) for i in range(3)] == [0x1111, stale, 0x2222]
    assert [e.raw.EXIT_REASON for e, *_ in vmm.seen if e.raw.EXIT_REASON == 58] == ([58] if paging == "shadow" else [])


def test_an_intercepted_cr8_write_the_vmm_lets_complete_reaches_the_tpr(make_vm, hvsim_pm, arch):
    """A VMM that does not emulate the exit has the write completed as it would have been
    without the intercept: into the APIC's TPR (no TPR shadow / V_INTR_MASKING here)."""
    vmm = Vmm()
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, f"mov rcx, 7\nmov cr8, rcx\nmov rbx, cr8\nmov [{X86_DATA:#x}], rbx\n{END}")
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        set_controls(vcpu, proc=msrs.CPU_BASED_CR8_LOAD_EXITING)
    else:
        vcpu.context.vmcb.write("INTERCEPT_CR_WRITE", 1 << 8)
    assert vm.run(timeout=10).status == 1
    assert len(vmm.seen) == 1 and vm.memory.read_u64(X86_DATA) == 7 and vcpu.context.tpr == 0x70
