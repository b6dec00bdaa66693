"""A64 load/store decoding: what the hardware puts in a Data Abort's instruction syndrome.

Encodings from the Arm ARM (DDI 0487) C4.1 "A64 instruction set encoding", group "Loads and
Stores". The ISS rules are those of ESR_EL2's "ISS encoding for an exception from a Data
Abort": ISV is 1 only for loads and stores of a single general-purpose register (acquire /
release forms included), and 0 for exclusives, pairs, SIMD&FP registers, atomics and any form
with writeback. A decoded instruction also says how to recompute its virtual address (for
FAR_EL2) and how many bytes it moves: Unicorn's MMIO callbacks never exceed 4 bytes, so an
8-byte access arrives in pieces (two words, or single bytes when it is not aligned).
"""

from __future__ import annotations

from .exits import ESR_ELx_AR, ESR_ELx_ISV, ESR_ELx_SAS_SHIFT, ESR_ELx_SF, ESR_ELx_SRT_SHIFT, ESR_ELx_SSE

# How the virtual address is formed.
ADDR_BASE_IMM = 0  # X[n|SP] + imm (post-index: imm 0, the base before writeback)
ADDR_BASE_REG = 1  # X[n|SP] + extend(X[m]) << shift
ADDR_LITERAL = 2  # PC + imm
ADDR_UNKNOWN = -1  # not decoded: FAR_EL2 falls back to the IPA

WB_NONE, WB_POST, WB_PRE = 0, 1, 2

_MASK64 = (1 << 64) - 1


class LoadStore:
    """One decoded load/store: direction, per-register size, syndrome bits, address recipe."""

    __slots__ = ("word", "is_load", "size", "regs", "isv", "sse", "sf", "simd", "iss", "rt",
                 "rt2", "rn", "rm", "imm", "addr", "option", "shift", "wb", "wb_imm",
                 "total", "merge")

    def __init__(self, word: int, is_load: bool | None, size: int, *, isv: bool = False,
                 sse: bool = False, sf: bool = False, ar: bool = False, regs: int = 1,
                 rn: int = 0, imm: int = 0, addr: int = ADDR_BASE_IMM, rm: int = 0,
                 option: int = 0, shift: int = 0, simd: bool = False, wb: int = WB_NONE,
                 wb_imm: int = 0) -> None:
        self.word = word
        self.is_load = is_load  # None: either direction (an instruction hvsim cannot decode)
        self.size = size  # bytes per register transferred
        self.regs = regs
        self.rt = word & 31
        self.rt2 = (word >> 10) & 31
        self.rn, self.rm, self.imm = rn, rm, imm
        self.addr, self.option, self.shift = addr, option, shift
        self.wb, self.wb_imm = wb, wb_imm  # base register writeback: Xn += wb_imm
        self.isv, self.sse, self.sf, self.simd = isv, sse, sf, simd
        sas = size.bit_length() - 1
        self.iss = (ESR_ELx_ISV | sas << ESR_ELx_SAS_SHIFT | (ESR_ELx_SSE if sse else 0)
                    | self.rt << ESR_ELx_SRT_SHIFT | (ESR_ELx_SF if sf else 0)
                    | (ESR_ELx_AR if ar else 0)) if isv else 0
        self.total = regs * size  # bytes the instruction moves
        self.merge = isv  # one register: one exit, however Unicorn cuts the access up

    def address(self, xreg, pc: int) -> int:
        """The virtual address, given ``xreg(n)`` (n = 31 reads SP) and the instruction's PC."""
        if self.addr == ADDR_UNKNOWN:
            raise ValueError("no address recipe for an undecoded instruction")
        if self.addr == ADDR_LITERAL:
            return (pc + self.imm) & _MASK64
        base = xreg(self.rn)
        if self.addr == ADDR_BASE_IMM:
            return (base + self.imm) & _MASK64
        index = xreg(self.rm) if self.rm != 31 else 0  # Rm = 31 is XZR here
        opt = self.option
        if opt & 3 == 2:  # UXTW / SXTW
            index &= 0xFFFF_FFFF
            if opt & 4 and index & 0x8000_0000:
                index -= 1 << 32
        return (base + (index << self.shift)) & _MASK64

    def __repr__(self) -> str:
        kind = "load" if self.is_load else "store"
        return f"LoadStore({kind}, {self.regs}x{self.size}B, ISV={int(self.isv)}, {self.word:#010x})"


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def _gpr_width(size: int, opc: int) -> tuple[bool, bool, bool] | None:
    """(is_load, SSE, SF) for a single-register GPR load/store; None for PRFM / unallocated."""
    if opc == 0:
        return False, False, size == 3
    if opc == 1:
        return True, False, size == 3
    if size == 3 or (size == 2 and opc == 3):
        return None  # PRFM, or unallocated
    return True, True, opc == 2  # LDRS*: opc 2 extends to 64 bits, opc 3 to 32


def decode(word: int) -> LoadStore | None:
    """Decode a load/store instruction word; None when it is not one that touches memory."""
    size, rn = word >> 30, (word >> 5) & 31
    v = (word >> 26) & 1
    if word & 0x3B00_0000 == 0x3900_0000:  # load/store register (unsigned immediate)
        return _single(word, size, v, rn, (word >> 10 & 0xFFF), scaled=True, isv=True)
    if word & 0x3B20_0000 == 0x3800_0000:  # unscaled, post-index, unprivileged, pre-index
        mode = (word >> 10) & 3
        imm9 = _sext((word >> 12) & 0x1FF, 9)
        ls = _single(word, size, v, rn, 0 if mode == 1 else imm9, scaled=False, isv=mode in (0, 2))
        if ls is not None and mode in (1, 3):
            ls.wb, ls.wb_imm = (WB_POST if mode == 1 else WB_PRE), imm9
        return ls
    if word & 0x3B20_0C00 == 0x3820_0800:  # register offset
        ls = _single(word, size, v, rn, 0, scaled=False, isv=True)
        if ls is not None:
            ls.addr, ls.rm, ls.option = ADDR_BASE_REG, (word >> 16) & 31, (word >> 13) & 7
            ls.shift = (ls.size.bit_length() - 1) if word & (1 << 12) else 0
        return ls
    if word & 0x3FFF_FC00 == 0x38BF_C000:  # LDAPR: load-acquire RCpc
        return LoadStore(word, True, 1 << size, isv=True, sf=size == 3, ar=True, rn=rn)
    if word & 0x3B20_0000 == 0x3820_0000 and v == 0:  # atomics (LSE), LDRAA/LDRAB
        is_pac = bool(word & (1 << 10))
        return LoadStore(word, True, 8 if is_pac else 1 << size, rn=rn)
    if word & 0x3F00_0000 == 0x0800_0000:  # load/store exclusive and ordered
        o2, is_load, o1 = word >> 23 & 1, bool(word >> 22 & 1), word >> 21 & 1
        if o2 and not o1:  # LDAR, STLR, LDLAR, STLLR
            return LoadStore(word, is_load, 1 << size, isv=True, sf=size == 3, ar=True, rn=rn)
        pair = not o2 and o1  # LDXP / STXP and friends
        return LoadStore(word, is_load, 1 << size if not pair else 4 << (size & 1),
                         regs=2 if pair else 1, rn=rn)
    if word & 0x3F20_0C00 == 0x1900_0000:  # LDAPUR / STLUR (RCpc, unscaled)
        opc = (word >> 22) & 3
        width = _gpr_width(size, opc)
        if width is None:
            return None
        is_load, sse, sf = width
        return LoadStore(word, is_load, 1 << size, isv=True, sse=sse, sf=sf, ar=True, rn=rn,
                         imm=_sext((word >> 12) & 0x1FF, 9))
    if word & 0x3A00_0000 == 0x2800_0000:  # load/store pair (any indexing)
        opc, is_load, mode = word >> 30, bool(word >> 22 & 1), (word >> 23) & 3
        size_b = (4 << opc) if v else (8 if opc == 2 else 4)
        imm = _sext((word >> 15) & 0x7F, 7) * size_b
        wb = {1: WB_POST, 3: WB_PRE}.get(mode, WB_NONE)
        return LoadStore(word, is_load, size_b, regs=2, rn=rn, imm=0 if mode == 1 else imm,
                         simd=bool(v), sse=opc == 1 and not v, sf=opc != 0, wb=wb, wb_imm=imm)
    if word & 0x3B00_0000 == 0x1800_0000:  # load register (literal)
        imm = _sext((word >> 5) & 0x7FFFF, 19) * 4
        if v:
            return LoadStore(word, True, 4 << size, addr=ADDR_LITERAL, imm=imm, simd=True)
        if size == 3:
            return None  # PRFM (literal)
        return LoadStore(word, True, 8 if size else 4, isv=True, sse=size == 2, sf=size != 0,
                         addr=ADDR_LITERAL, imm=imm)
    return None


def _single(word: int, size: int, v: int, rn: int, imm: int, *, scaled: bool,
            isv: bool) -> LoadStore | None:
    opc = (word >> 22) & 3
    if v:  # SIMD&FP register: never a valid syndrome
        nbytes = 16 if size == 0 and opc & 2 else 1 << size
        return LoadStore(word, bool(opc & 1), nbytes, rn=rn, imm=imm * nbytes if scaled else imm,
                         simd=True)
    width = _gpr_width(size, opc)
    if width is None:
        return None
    is_load, sse, sf = width
    nbytes = 1 << size
    return LoadStore(word, is_load, nbytes, isv=isv, sse=sse, sf=sf, rn=rn,
                     imm=imm * nbytes if scaled else imm)
