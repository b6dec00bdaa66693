"""MOV DR (SDM 26.1.3, Table 28-4; APM 15.8.x DR intercepts with decode assists) and the
descriptor-table instructions (SDM 26.1.3 "descriptor-table exiting", 28.2.5 Tables 28-10 and
28-11; APM 15.13.x IDTR/GDTR/LDTR/TR intercepts 0x66-0x6D)."""

from __future__ import annotations

import pytest

from intercept_helpers import END, X86_DATA, Vmm, boot, code, msrs, set_controls, vmread

RSP, RBX, RCX, RAX = 4, 3, 1, 0


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


DR_GUEST = f"""
    mov rax, 0x1234
    mov dr0, rax
    mov rbx, dr0
    mov [{X86_DATA:#x}], rbx
    mov rbx, dr7
    {END}"""


def test_mov_dr_runs_in_the_guest_when_not_intercepted(make_vm, hvsim_pm, arch):
    vmm = Vmm()
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, DR_GUEST)
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u64(X86_DATA) == 0x1234 and not vmm.seen


def test_mov_dr_exits_with_the_register_number_and_direction(make_vm, hvsim_pm, arch):
    vmm = Vmm(lambda vcpu, exit: True)  # emulated: the guest's DR0 is never written
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, DR_GUEST)
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        set_controls(vcpu, proc=msrs.CPU_BASED_MOV_DR_EXITING)
    else:
        vcpu.context.vmcb.write("INTERCEPT_DR_READ", 1 << 0 | 1 << 7)
        vcpu.context.vmcb.write("INTERCEPT_DR_WRITE", 1 << 0)
    assert vm.run(timeout=10).status == 1
    (write, wrip, _), (read0, _, _), (read7, rip7, _) = vmm.seen
    assert vm.memory.read(wrip, 3) == b"\x0f\x23\xc0" and vm.memory.read(rip7, 3) == b"\x0f\x21\xfb"
    if arch == "intel_vtx":
        assert {e.raw.EXIT_REASON for e in (write, read0, read7)} == {29}
        assert write.reason == "EXIT_REASON_DR_ACCESS"
        assert write.raw.EXIT_QUALIFICATION == 0 | 0 << 4 | RAX << 8
        assert read0.raw.EXIT_QUALIFICATION == 0 | 1 << 4 | RBX << 8
        assert read7.raw.EXIT_QUALIFICATION == 7 | 1 << 4 | RBX << 8
        assert write.raw.VM_EXIT_INSTRUCTION_LEN == 3
    else:
        assert (write.raw.EXITCODE, write.raw.EXITINFO1) == (0x30, RAX)
        assert (read0.raw.EXITCODE, read0.raw.EXITINFO1) == (0x20, RBX)
        assert (read7.raw.EXITCODE, read7.raw.EXITINFO1, read7.raw.NRIP) == (0x27, RBX, rip7 + 3)
    assert vcpu.uc.reg_read(__import__("unicorn").x86_const.UC_X86_REG_DR0) == 0


def test_mov_dr4_with_cr4_de_is_ud_on_svm_but_exits_first_on_vmx(make_vm, hvsim_pm, arch):
    """SDM 26.1.3: MOV-DR exits take priority over the #UD of DR4/DR5 with CR4.DE = 1 (and the
    #GP of CPL > 0); under SVM the #UD comes first (APM 15.7.1)."""
    from intercept_helpers import UD_MARK, handler

    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, f"""
        mov rax, cr4
        or rax, 8
        mov cr4, rax
        mov rbx, dr4
        mov al, [{UD_MARK:#x}]
        out 0xf4, al
        hlt
    ud:
        {handler(6, 3)}""", gates={6: "ud"})
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        set_controls(vcpu, proc=msrs.CPU_BASED_MOV_DR_EXITING)
    else:
        vcpu.context.vmcb.write("INTERCEPT_DR_READ", 0xFFFF)
    status = vm.run(timeout=10).status
    dr_exits = [e for e, *_ in vmm.seen if "DR" in e.reason]
    if arch == "intel_vtx":
        (exit,) = dr_exits
        assert status == 1 and exit.raw.EXIT_QUALIFICATION == 4 | 1 << 4 | RBX << 8
    else:
        assert status == 6 << 1 | 1 and not dr_exits


# instruction, identity, reason (VMX), EXITCODE (SVM)
DESCRIPTOR_TABLE = [("sgdt", 0, 46, 0x67), ("sidt", 1, 46, 0x66), ("lgdt", 2, 46, 0x6B), ("lidt", 3, 46, 0x6A),
                    ("sldt", 0, 47, 0x68), ("str", 1, 47, 0x69), ("lldt", 2, 47, 0x6C), ("ltr", 3, 47, 0x6D)]


@pytest.mark.parametrize("insn,identity,reason,exitcode", DESCRIPTOR_TABLE)
def test_descriptor_table_instruction_with_a_memory_operand_exits_with_instruction_information(
        make_vm, hvsim_pm, arch, insn, identity, reason, exitcode):
    """VMX: reason 46/47, qualification = the displacement, instruction information with
    scaling, address size, segment, index, base and the instruction identity (Tables 28-10,
    28-11). SVM: the EXITCODE of its intercept and nRIP."""
    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    size = "" if insn in ("sgdt", "sidt", "lgdt", "lidt") else "word ptr "
    vm = boot(make_vm, arch, f"""
        mov rbx, {X86_DATA:#x}
        mov rcx, 4
        {insn} {size}fs:[rbx + rcx*8 - 0x20]
        {END}""")
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        set_controls(vcpu, proc2=msrs.SECONDARY_EXEC_DESC)
    else:
        vcpu.context.vmcb.set_intercept({0x66: "IDTR_READ", 0x67: "GDTR_READ", 0x68: "LDTR_READ", 0x69: "TR_READ",
                                         0x6A: "IDTR_WRITE", 0x6B: "GDTR_WRITE", 0x6C: "LDTR_WRITE",
                                         0x6D: "TR_WRITE"}[exitcode])
    assert vm.run(timeout=10).status == 1
    (exit, rip, _), = vmm.seen
    length = 6  # FS prefix, 0F 01/00, ModRM, SIB, disp8
    assert vm.memory.read(rip, 1) == b"\x64"
    if arch == "intel_vtx":
        assert exit.raw.EXIT_REASON == reason and exit.raw.VM_EXIT_INSTRUCTION_LEN == length
        assert exit.raw.EXIT_QUALIFICATION == (-0x20) & (1 << 64) - 1  # sign-extended displacement
        info = exit.raw.VMX_INSTRUCTION_INFO
        assert info & 3 == 3  # scaling: by 8
        assert info >> 7 & 7 == 2  # 64-bit address size
        assert not info >> 10 & 1  # memory operand
        assert info >> 15 & 7 == 4  # FS
        assert info >> 18 & 0xF == RCX and not info >> 22 & 1
        assert info >> 23 & 0xF == RBX and not info >> 27 & 1
        assert info >> 28 & 3 == identity
    else:
        assert exit.raw.EXITCODE == exitcode and exit.raw.NRIP == rip + length


@pytest.mark.parametrize("insn,identity", [("sldt", 0), ("str", 1), ("lldt", 2), ("ltr", 3)])
def test_vmx_ldtr_tr_access_with_a_register_operand(make_vm, hvsim_pm, insn, identity):
    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, "intel_vtx", f"{insn} si\n{END}")
    set_controls(vm.vcpus[0], proc2=msrs.SECONDARY_EXEC_DESC)
    assert vm.run(timeout=10).status == 1
    (exit, _, _), = vmm.seen
    info = exit.raw.VMX_INSTRUCTION_INFO
    assert exit.raw.EXIT_REASON == 47 and exit.raw.EXIT_QUALIFICATION == 0
    assert info >> 10 & 1 and info >> 3 & 0xF == 6 and info >> 28 & 3 == identity  # register RSI


def test_vmx_rip_relative_sgdt_reports_the_displacement_plus_the_next_rip(make_vm, hvsim_pm):
    vmm = Vmm(lambda vcpu, exit: True)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, "intel_vtx", f"sgdt [rip + 0x100]\n{END}")
    set_controls(vm.vcpus[0], proc2=msrs.SECONDARY_EXEC_DESC)
    assert vm.run(timeout=10).status == 1
    (exit, rip, _), = vmm.seen
    info = exit.raw.VMX_INSTRUCTION_INFO
    assert exit.raw.EXIT_QUALIFICATION == rip + 7 + 0x100  # SDM 28.2.1: RIP-relative addressing
    assert info >> 22 & 1 and info >> 27 & 1  # no index, no base register


def test_descriptor_table_instructions_run_in_the_guest_when_not_intercepted(make_vm, hvsim_pm, arch):
    vmm = Vmm()
    hvsim_pm.register(vmm)
    vm = boot(make_vm, arch, f"sgdt [{X86_DATA:#x}]\nsidt [{X86_DATA + 0x10:#x}]\nstr ax\nmov [{X86_DATA + 0x20:#x}], ax\n{END}")
    assert vm.run(timeout=10).status == 1
    assert not vmm.seen
    gdtr = vm.vcpus[0].uc.reg_read(__import__("unicorn").x86_const.UC_X86_REG_GDTR)
    assert int.from_bytes(vm.memory.read(X86_DATA, 2), "little") == gdtr[2]
    assert int.from_bytes(vm.memory.read(X86_DATA + 2, 8), "little") == gdtr[1]
    if arch == "intel_vtx":
        assert vmread(vm.vcpus[0], "GUEST_GDTR_BASE") == gdtr[1]
    assert code  # the helper module is shared with the other intercept tests


def test_mov_dr_and_descriptor_table_sites_are_hooked_only_while_intercepted(make_vm, arch):
    """Hot-path rule: instructions the engine runs correctly get no hook unless a control wants
    them (plugins/x86/traps.py ON_DEMAND)."""
    vm = boot(make_vm, arch, f"{DR_GUEST}\nsgdt [{X86_DATA + 0x40:#x}]\nrdrand eax")
    assert vm.run(timeout=10).status == 1
    kinds = {kind for kind, *_ in vm.vcpus[0]._traps.sites.values()}
    assert not kinds & {"mov_to_dr", "mov_from_dr", "sgdt", "rdrand"}
