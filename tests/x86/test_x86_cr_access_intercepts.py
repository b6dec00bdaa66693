"""Control-register accesses beyond MOV CR3/CR0 writes: CLTS, LMSW, SMSW, reads of CR0/CR4
through the read shadows, CR8 with the TPR shadow / V_TPR (SDM 26.1.3, 26.3, 28.2.1 Table 28-3,
30.1; APM 15.8, 15.21.1, 15.33.1)."""

from __future__ import annotations

import pytest
from unicorn import x86_const as X

from hvsim import hookimpl
from intercept_helpers import END, X86_DATA, Vmm, boot, code, msrs, set_controls, vmread, vmwrite

CR0_TS, CR0_MP, CR0_EM = 1 << 3, 1 << 1, 1 << 2


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


def skip_all(vcpu, exit):
    return True


def test_clts_runs_in_the_guest_when_not_intercepted(make_vm, hvsim_pm, arch):
    vmm = Vmm()
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, f"""
        mov rax, cr0
        or rax, {CR0_TS}
        mov cr0, rax
        clts
        mov rax, cr0
        mov [{X86_DATA:#x}], rax
        {END}""")
    assert vm.run(timeout=10).status == 1
    assert not vm.memory.read_u64(X86_DATA) & CR0_TS
    assert not [e for e, *_ in vmm.seen if "CR0" in e.reason or "CR_ACCESS" in e.reason]


def test_clts_exits_as_a_cr0_write_when_intercepted(make_vm, hvsim_pm, arch):
    """VMX: TS owned by the CR0 guest/host mask and set in the read shadow (qualification:
    CR0, access type 2 = CLTS). SVM: the CR0 write intercept, EXITINFO1 bit 63 clear (not a
    MOV CR); the VMM emulates it: TS stays as it chose."""
    vmm = Vmm(skip_all)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, f"""
        mov rax, cr0
        or rax, {CR0_TS}
        mov cr0, rax
        clts
        mov rax, cr0
        mov [{X86_DATA:#x}], rax
        {END}""")
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        # The VMM owns TS; the guest's MOV CR0 setting TS then differs from the shadow (0): that
        # write exits too and the VMM lets it complete, so the shadow follows it (TS = 1).
        vmm.emulate = lambda vcpu, exit: exit.raw.EXIT_QUALIFICATION & 0x30 == 0x20
        vmwrite(vcpu, CR0_GUEST_HOST_MASK=msrs.X86_CR0_NE | CR0_TS)
    else:
        vmm.emulate = lambda vcpu, exit: exit.raw.EXITINFO1 == 0  # CLTS; the MOV CR0 completes
        vcpu.context.vmcb.write("INTERCEPT_CR_WRITE", 1 << 0)
    assert vm.run(timeout=10).status == 1
    clts = vmm.seen[-1][0]
    assert vm.memory.read(clts.raw.GUEST_RIP if arch == "intel_vtx" else clts.raw.NRIP - 2, 2) == b"\x0f\x06"
    if arch == "intel_vtx":
        assert clts.raw.EXIT_REASON == 28 and clts.raw.EXIT_QUALIFICATION == 0 | 2 << 4
        assert clts.raw.VM_EXIT_INSTRUCTION_LEN == 2
    else:
        assert clts.raw.EXITCODE == 0x10 and clts.raw.EXITINFO1 == 0
    assert vm.memory.read_u64(X86_DATA) & CR0_TS  # emulated by a VMM that left TS set


@pytest.mark.parametrize("memory", [False, True])
def test_lmsw_exits_with_its_source_data(make_vm, hvsim_pm, arch, memory):
    """VMX: an owned MP that LMSW would make differ from the shadow exits; the qualification
    has access type 3, the operand type (bit 6) and the source in 31:16, and an LMSW from memory
    also reports the operand's linear address. SVM: a CR0 write (0x10), EXITINFO1 bit 63 clear."""
    gla = []  # the VMCS field at the exit, read by the VMM
    vmm = Vmm(lambda vcpu, exit: gla.append(vmread(vcpu, "GUEST_LINEAR_ADDRESS") if arch == "intel_vtx" else 0) or True)
    hvsim_pm.register(vmm)
    operand = f"word ptr [{X86_DATA + 0x10:#x}]" if memory else "cx"
    vm = boot(make_vm, arch, f"""
        mov rax, cr0
        mov rcx, rax
        or cx, {CR0_MP}
        mov [{X86_DATA + 0x10:#x}], cx
        lmsw {operand}
        mov rax, cr0
        mov [{X86_DATA:#x}], rax
        {END}""")
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        vmwrite(vcpu, CR0_GUEST_HOST_MASK=msrs.X86_CR0_NE | CR0_MP)
    else:
        vcpu.context.vmcb.write("INTERCEPT_CR_WRITE", 1 << 0)
    assert vm.run(timeout=10).status == 1
    (exit, rip, _rbx), = vmm.seen
    cr0 = vm.memory.read_u64(X86_DATA)
    assert not cr0 & CR0_MP  # emulated (skipped) by the VMM
    source = (cr0 | CR0_MP) & 0xFFFF
    length = 7 if memory else 3
    if arch == "intel_vtx":
        assert exit.raw.EXIT_REASON == 28 and exit.raw.VM_EXIT_INSTRUCTION_LEN == length
        assert exit.raw.EXIT_QUALIFICATION == 0 | 3 << 4 | (1 << 6 if memory else 0) | source << 16
        assert gla == [X86_DATA + 0x10 if memory else 0]
    else:
        assert exit.raw.EXITCODE == 0x10 and exit.raw.EXITINFO1 == 0 and exit.raw.NRIP == rip + length


def test_svm_selective_cr0_write_ignores_ts_and_mp(make_vm, hvsim_pm):
    """APM 15.8.2: CR0_SEL_WRITE (0x65) takes CR0 writes that change bits other than TS/MP:
    setting MP passes, setting EM exits, for LMSW as for MOV CR0 (whose EXITINFO1 has bit 63
    and the GPR)."""
    vmm = Vmm(skip_all)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, "amd_svm", f"""
        mov rax, cr0
        or rax, {CR0_MP}
        mov cr0, rax
        mov rcx, rax
        or cx, {CR0_EM}
        lmsw cx
        mov rdx, rax
        or rdx, {CR0_EM}
        mov cr0, rdx
        {END}""")
    vm.vcpus[0].context.vmcb.set_intercept("CR0_SEL_WRITE")
    assert vm.run(timeout=10).status == 1
    lmsw, mov = (e for e, *_ in vmm.seen)
    assert lmsw.raw.EXITCODE == mov.raw.EXITCODE == 0x65 and lmsw.reason == "VMEXIT_CR0_SEL_WRITE"
    assert lmsw.raw.EXITINFO1 == 0 and mov.raw.EXITINFO1 == 1 << 63 | 2  # MOV CR0, RDX


def test_svm_smsw_is_a_cr0_read(make_vm, hvsim_pm):
    vmm = Vmm()
    hvsim_pm.register(vmm)
    vm = boot(make_vm, "amd_svm", f"smsw eax\nmov [{X86_DATA:#x}], eax\n{END}")
    vm.vcpus[0].context.vmcb.write("INTERCEPT_CR_READ", 1 << 0)
    assert vm.run(timeout=10).status == 1
    (exit, rip, _), = vmm.seen
    assert exit.raw.EXITCODE == 0x00 and exit.raw.EXITINFO1 == 0 and exit.raw.NRIP == rip + 3
    assert vm.memory.read_u32(X86_DATA) == vm.vcpus[0].cr0() & 0xFFFF_FFFF  # not emulated: ran


class SetShadowAtVmcall:
    """A VMM that, at the guest's VMCALL, takes ownership of CR0.TS and CR4.PCE with shadows
    that say they are set, without setting them in GUEST_CR0/CR4."""

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        from hvsim.core.exits import ExitKind

        def on_vmcall(vcpu, exit):
            vmwrite(vcpu, CR0_GUEST_HOST_MASK=msrs.X86_CR0_NE | CR0_TS,
                    CR0_READ_SHADOW=vmread(vcpu, "CR0_READ_SHADOW") | CR0_TS,
                    CR4_GUEST_HOST_MASK=msrs.X86_CR4_VMXE | 1 << 8,
                    CR4_READ_SHADOW=vmread(vcpu, "CR4_READ_SHADOW") | 1 << 8)
            vcpu.regs.write(X.UC_X86_REG_RIP, vcpu.rip() + 3)

        registry.add(ExitKind.HYPERCALL, on_vmcall)


def test_vmx_mov_from_cr0_and_cr4_reads_the_read_shadow_in_owned_bits(make_vm, hvsim_pm):
    hvsim_pm.register(SetShadowAtVmcall())
    vm = boot(make_vm, "intel_vtx", f"""
        vmcall
        mov rax, cr0
        mov [{X86_DATA:#x}], rax
        mov rax, cr4
        mov [{X86_DATA + 8:#x}], rax
        {END}""")
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u64(X86_DATA) & CR0_TS and vm.memory.read_u64(X86_DATA + 8) & 1 << 8
    vcpu = vm.vcpus[0]
    assert not vmread(vcpu, "GUEST_CR0") & CR0_TS  # the register itself: the VMM's value
    assert not vmread(vcpu, "GUEST_CR4") & 1 << 8
    assert vmread(vcpu, "GUEST_CR0") & msrs.X86_CR0_NE and not vm.memory.read_u64(X86_DATA) & msrs.X86_CR0_NE


def test_cr8_exits_when_intercepted_with_the_register_in_the_record(make_vm, hvsim_pm, arch):
    vmm = Vmm(skip_all)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, f"mov rcx, 5\nmov cr8, rcx\nmov rbx, cr8\n{END}")
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        set_controls(vcpu, proc=msrs.CPU_BASED_CR8_LOAD_EXITING | msrs.CPU_BASED_CR8_STORE_EXITING)
    else:
        vcpu.context.vmcb.write("INTERCEPT_CR_READ", 1 << 8)
        vcpu.context.vmcb.write("INTERCEPT_CR_WRITE", 1 << 8)
    assert vm.run(timeout=10).status == 1
    (write, wrip, _), (read, rrip, _) = vmm.seen
    if arch == "intel_vtx":
        assert write.raw.EXIT_QUALIFICATION == 8 | 0 << 4 | 1 << 8  # CR8, MOV to CR, RCX
        assert read.raw.EXIT_QUALIFICATION == 8 | 1 << 4 | 3 << 8  # CR8, MOV from CR, RBX
        assert write.raw.VM_EXIT_INSTRUCTION_LEN == read.raw.VM_EXIT_INSTRUCTION_LEN == 4
    else:
        assert (write.raw.EXITCODE, write.raw.EXITINFO1) == (0x18, 1 << 63 | 1)
        assert (read.raw.EXITCODE, read.raw.EXITINFO1) == (0x08, 1 << 63 | 3)
        assert write.raw.NRIP == wrip + 4 and read.raw.NRIP == rrip + 4


def test_cr8_without_an_exit_reaches_the_virtual_tpr(make_vm, recorder, arch):
    """VMX "use TPR shadow": MOV to CR8 writes bits 7:4 of VTPR (offset 0x80 of the
    virtual-APIC page), MOV from CR8 reads them back (SDM 30.3). SVM V_INTR_MASKING: CR8 is
    V_TPR (15.21.1). Neither exits."""
    vm = boot(make_vm, arch, f"mov rcx, 5\nmov cr8, rcx\nmov rbx, cr8\nmov [{X86_DATA:#x}], rbx\n{END}")
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        set_controls(vcpu, proc=msrs.CPU_BASED_TPR_SHADOW)
    else:
        vcpu.context.vmcb.write("V_INTR_MASKING", 1)
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u64(X86_DATA) == 5
    assert not [e for e in recorder.exits if e.kind.name == "INSTRUCTION"]
    if arch == "intel_vtx":
        page = vmread(vcpu, "VIRTUAL_APIC_PAGE_ADDR")
        assert vm.host.read(page + 0x80, 4) == bytes([0x50, 0, 0, 0])
    else:
        assert vcpu.context.vmcb.read("V_TPR") == 5


def test_cr8_without_tpr_virtualization_is_the_apics_tpr(make_vm, recorder, arch):
    vm = boot(make_vm, arch, f"mov rcx, 9\nmov cr8, rcx\nmov rbx, cr8\nmov [{X86_DATA:#x}], rbx\n{END}")
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u64(X86_DATA) == 9 and vm.vcpus[0].context.tpr == 0x90


def test_vmx_tpr_below_threshold_is_a_trap_like_exit_after_mov_to_cr8(make_vm, hvsim_pm, recorder):
    vm = boot(make_vm, "intel_vtx", f"mov rcx, 3\nmov cr8, rcx\nmov byte ptr [{X86_DATA:#x}], 1\n{END}")
    vcpu = vm.vcpus[0]
    set_controls(vcpu, proc=msrs.CPU_BASED_TPR_SHADOW)
    vm.host.write(vmread(vcpu, "VIRTUAL_APIC_PAGE_ADDR") + 0x80, b"\x40")  # VTPR 0x40: entry allows threshold 4
    vmwrite(vcpu, TPR_THRESHOLD=4)
    assert vm.run(timeout=10).status == 1
    (exit,) = [e for e in recorder.exits if e.kind.name == "INSTRUCTION"]
    assert exit.raw.EXIT_REASON == 43 and exit.reason == "EXIT_REASON_TPR_BELOW_THRESHOLD"
    assert exit.raw.EXIT_QUALIFICATION == 0
    assert vm.memory.read(exit.raw.GUEST_RIP - 4, 4) == b"\x44\x0f\x22\xc1"  # RIP past MOV CR8, RCX
    assert vm.memory.read(X86_DATA, 1) == b"\x01"


def test_lmsw_whose_operand_faults_takes_the_fault_without_an_exit(make_vm, hvsim_pm, arch):
    """The page fault on LMSW's memory operand comes before the VMX CR-access exit (whose
    qualification needs the source) and SVM's selective CR0 write check."""
    from intercept_helpers import UD_MARK, handler

    vmm = Vmm(skip_all)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, f"""
        mov rax, 0x7fff00000000
        lmsw word ptr [rax]
        mov al, [{UD_MARK:#x}]
        out 0xf4, al
        hlt
    gp:
        {handler(13, 3)}
    pf:
        {handler(14, 3)}""", gates={13: "gp", 14: "pf"})
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        vmwrite(vcpu, CR0_GUEST_HOST_MASK=msrs.X86_CR0_NE | 0xF)
    else:
        vcpu.context.vmcb.set_intercept("CR0_SEL_WRITE")
    assert vm.run(timeout=10).status == 14 << 1 | 1 and not vmm.seen  # not mapped by the guest: #PF
