"""Just enough x86 instruction decoding for exit information: the I/O instructions.

VMX's exit qualification and SVM's EXITINFO1 say whether IN/OUT took its port from an
immediate or DX, whether it was a string instruction with REP, and how long the instruction
was (VM-exit instruction length, SVM nRIP). Decoded once per guest RIP and cached.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IoInsn:
    length: int
    immediate: bool  # port from imm8 (E4-E7) rather than DX
    string: bool  # INS / OUTS
    rep: bool
    address_size: int  # 16, 32 or 64: for string instructions
    segment: int  # 0 ES .. 5 GS: the segment of OUTS (SVM EXITINFO1.SEG)


_SEG_PREFIX = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}


def decode_io(code: bytes, default_address_size: int) -> IoInsn | None:
    """Decode the I/O instruction at the start of ``code`` (up to 15 bytes)."""
    i, rep, addr_override, segment = 0, False, False, 3  # DS by default
    while i < len(code) and i < 14:
        b = code[i]
        if b in (0xF3, 0xF2):
            rep = True
        elif b == 0x67:
            addr_override = True
        elif b in _SEG_PREFIX:
            segment = _SEG_PREFIX[b]
        elif b == 0x66 or 0x40 <= b <= 0x4F and default_address_size == 64:
            pass
        else:
            break
        i += 1
    if i >= len(code):
        return None
    op = code[i]
    if default_address_size == 64:
        address_size = 32 if addr_override else 64
    elif default_address_size == 32:
        address_size = 16 if addr_override else 32
    else:
        address_size = 32 if addr_override else 16
    # Only OUTS reads memory through a segment (DS unless overridden); INS writes ES:rDI.
    if op in (0xE4, 0xE5, 0xE6, 0xE7):
        return IoInsn(i + 2, True, False, False, address_size, 0)
    if op in (0xEC, 0xED, 0xEE, 0xEF):
        return IoInsn(i + 1, False, False, False, address_size, 0)
    if op in (0x6C, 0x6D, 0x6E, 0x6F):
        return IoInsn(i + 1, False, True, rep, address_size, segment if op >= 0x6E else 0)
    return None


_CS = {}


def writes_memory(code: bytes, bits: int) -> bool | None:
    """Whether the instruction at the start of ``code`` writes a memory operand (capstone's
    operand access); None if it does not decode. The #PF error code's W bit comes from this,
    since the engine reports a page fault without saying which access caused it."""
    import capstone
    from capstone import x86_const

    md = _CS.get(bits)
    if md is None:
        mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
        md = _CS[bits] = capstone.Cs(capstone.CS_ARCH_X86, mode)
        md.detail = True
    insn = next(md.disasm(code, 0, 1), None)
    if insn is None:
        return None
    if insn.id in (x86_const.X86_INS_PUSH, x86_const.X86_INS_CALL, x86_const.X86_INS_STOSB,
                   x86_const.X86_INS_STOSW, x86_const.X86_INS_STOSD, x86_const.X86_INS_STOSQ,
                   x86_const.X86_INS_MOVSB, x86_const.X86_INS_MOVSW, x86_const.X86_INS_MOVSD,
                   x86_const.X86_INS_MOVSQ):
        return True
    return any(op.type == x86_const.X86_OP_MEM and op.access & capstone.CS_AC_WRITE for op in insn.operands)


# The virtualization instructions a guest may execute, by capstone mnemonic.
VMX_INSTRUCTIONS = frozenset({"vmclear", "vmlaunch", "vmptrld", "vmptrst", "vmread", "vmresume", "vmwrite",
                              "vmxoff", "vmxon", "invept", "invvpid", "vmfunc"})
SVM_INSTRUCTIONS = frozenset({"vmrun", "vmload", "vmsave", "stgi", "clgi", "skinit", "invlpga"})


# Instructions the engine raises #UD for (it does not implement them) that a VMM may intercept:
# capstone mnemonic -> the kind hvsim's handlers use. RDPRU (0F 01 FD) capstone does not know.
ENGINE_UNDEFINED = {"getsec": "getsec", "monitor": "monitor", "mwait": "mwait", "rdpmc": "rdpmc",
                    "xsaves": "xsaves", "xsaves64": "xsaves", "xrstors": "xrstors", "xrstors64": "xrstors",
                    "invpcid": "invpcid", "int1": "icebp"}


def undefined_instruction(code: bytes, bits: int, address: int = 0):
    """(kind, length, operands) for an instruction the engine reported as invalid that hvsim
    can say more about: a VMX/SVM instruction (kind = its mnemonic) or one of ENGINE_UNDEFINED;
    operands as plugins/x86/operands.py decodes them. None for anything else."""
    import capstone

    from .operands import operands

    md = _CS.get(("detail", bits))
    if md is None:
        mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
        md = _CS[("detail", bits)] = capstone.Cs(capstone.CS_ARCH_X86, mode)
        md.detail = True
    insn = next(md.disasm(code, address, 1), None)  # at its address: RIP-relative operands
    if insn is None:
        return ("rdpru", 3, ()) if code[:3] == b"\x0f\x01\xfd" else None
    kind = insn.mnemonic if insn.mnemonic in VMX_INSTRUCTIONS | SVM_INSTRUCTIONS else ENGINE_UNDEFINED.get(insn.mnemonic)
    if kind is None:
        return None
    return kind, insn.size, operands(md, insn)


def virtualization_instruction(code: bytes, bits: int) -> tuple[str, int] | None:
    """(mnemonic, length) when ``code`` starts with a VMX or SVM instruction, else None."""
    import capstone

    md = _CS.get(("plain", bits))
    if md is None:
        mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
        md = _CS[("plain", bits)] = capstone.Cs(capstone.CS_ARCH_X86, mode)
    insn = next(md.disasm(code, 0, 1), None)
    if insn is None or insn.mnemonic not in VMX_INSTRUCTIONS | SVM_INSTRUCTIONS:
        return None
    return insn.mnemonic, insn.size
