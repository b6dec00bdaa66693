"""The operand of a trapped instruction, as the exit records describe it: register or memory,
and for memory the addressing form (base, index, scale, displacement, segment, address size).

VMX's VM-exit instruction-information field (SDM Vol. 3C 28.2.5) and exit qualification
(the displacement, 28.2.1) and SVM's decode-assist EXITINFO1 (APM Vol. 2 15.33) are built
from this; it is decoded once per trap site, at translation time, from capstone's operands.
Registers are numbered as the SDM numbers them in exit information (0 RAX ... 15 R15).
"""

from __future__ import annotations

from dataclasses import dataclass

from capstone import CS_MODE_16
from capstone import x86_const as CX

_GPR_NAMES = (("rax", "eax", "ax", "al"), ("rcx", "ecx", "cx", "cl"), ("rdx", "edx", "dx", "dl"),
              ("rbx", "ebx", "bx", "bl"), ("rsp", "esp", "sp", "spl"), ("rbp", "ebp", "bp", "bpl"),
              ("rsi", "esi", "si", "sil"), ("rdi", "edi", "di", "dil"))
GPR_NUMBER: dict[str, int] = {name: n for n, names in enumerate(_GPR_NAMES) for name in names}
GPR_NUMBER.update({f"r{n}{suffix}": n for n in range(8, 16) for suffix in ("", "d", "w", "b")})
_SEGMENTS = {CX.X86_REG_ES: 0, CX.X86_REG_CS: 1, CX.X86_REG_SS: 2, CX.X86_REG_DS: 3,
             CX.X86_REG_FS: 4, CX.X86_REG_GS: 5}
_SS_BASES = {"rsp", "esp", "sp", "rbp", "ebp", "bp"}  # base registers that default to SS (SDM 3.7.4)
ES, CS, SS, DS, FS, GS = range(6)


@dataclass(frozen=True, slots=True)
class Operand:
    """One explicit operand of a trapped instruction."""

    register: int | None  # GPR number of a register operand; None for memory
    size: int  # operand size in bytes
    base: int | None = None  # memory: GPR numbers, None when absent (or RIP-relative)
    index: int | None = None
    scale: int = 1
    displacement: int = 0  # sign-extended; RIP-relative: displacement + next RIP (SDM 28.2.1)
    segment: int = DS
    address_size: int = 64
    rip_relative: bool = False
    data16: bool = False  # the instruction's operand-size attribute is 16 bits


    @property
    def memory(self) -> bool:
        return self.register is None


def _reg_number(md, reg: int) -> int | None:
    return GPR_NUMBER.get(md.reg_name(reg)) if reg else None


def operands(md, insn) -> tuple[Operand, ...]:
    """The GPR and memory operands of a capstone instruction decoded with detail (other
    register kinds, e.g. DR7 in MOV DR, are left out)."""
    data16 = (md.mode == CS_MODE_16) != (insn.prefix[2] == 0x66)
    out = []
    for op in insn.operands:
        if op.type == CX.X86_OP_REG:
            n = _reg_number(md, op.reg)
            if n is not None:
                out.append(Operand(n, op.size))
        elif op.type == CX.X86_OP_MEM:
            m = op.mem
            rip_relative = m.base in (CX.X86_REG_RIP, CX.X86_REG_EIP)
            base = None if rip_relative else _reg_number(md, m.base)
            segment = _SEGMENTS.get(m.segment)
            if segment is None:
                segment = SS if m.base and md.reg_name(m.base) in _SS_BASES else DS
            disp = m.disp + (insn.address + insn.size if rip_relative else 0)
            out.append(Operand(None, op.size, base, _reg_number(md, m.index), m.scale, disp,
                               segment, insn.addr_size * 8, rip_relative, data16))
    return tuple(out)


def effective_address(op: Operand, read_gpr) -> int:
    """The offset a memory operand addresses (before the segment base), truncated to its
    address size; ``read_gpr(n)`` reads GPR number n."""
    address = op.displacement
    if op.base is not None:
        address += read_gpr(op.base)
    if op.index is not None:
        address += read_gpr(op.index) * op.scale
    return address & ((1 << op.address_size) - 1)
