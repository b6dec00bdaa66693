"""X86Regs reads GDTR/IDTR/LDTR/TR and MSRs as the binding's reg_read does, at FastRegs' cost."""

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from hvsim.plugins.x86.regs import X86Regs


def test_descriptor_table_registers_and_msrs_read_as_the_binding_reads_them():
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0xFFFF_8000_1234_5000, 0x7F, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0x30_0000, 0xFFF, 0))
    uc.reg_write(X.UC_X86_REG_TR, (0x28, 0xABC000, 0x67, 0x8B))
    uc.reg_write(X.UC_X86_REG_MSR, (0xC000_0102, 0x1122_3344_5566_7788))  # IA32_KERNEL_GS_BASE
    regs = X86Regs(uc)
    for reg in (X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_LDTR, X.UC_X86_REG_TR):
        assert regs.mmr(reg) == tuple(uc.reg_read(reg))
    assert regs.mmr(X.UC_X86_REG_GDTR)[1:3] == (0xFFFF_8000_1234_5000, 0x7F)
    assert regs.msr(0xC000_0102) == 0x1122_3344_5566_7788
    assert regs.msr(0xC000_0080) == uc.reg_read(X.UC_X86_REG_MSR, 0xC000_0080)  # EFER


def test_a_narrow_register_read_after_a_wide_one_has_no_stale_upper_bytes():
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.reg_write(X.UC_X86_REG_RAX, (1 << 64) - 1)
    uc.reg_write(X.UC_X86_REG_CS, 0x10)
    regs = X86Regs(uc)
    assert regs.read(X.UC_X86_REG_RAX) == (1 << 64) - 1
    assert regs.read(X.UC_X86_REG_CS) == uc.reg_read(X.UC_X86_REG_CS) == 0x10  # 16 bits written
