"""A64 load/store decoding for the Data Abort instruction syndrome (Arm ARM C4.1 "Loads and
Stores"; ESR_EL2 ISS for a Data Abort: ISV only for single general-purpose registers without
writeback), checked on keystone-assembled words."""

from __future__ import annotations

import pytest

from el2guest import asm
from hvsim.plugins.arm_el2.decode import WB_NONE, WB_POST, WB_PRE, decode


def word(src: str, base: int = 0x1000) -> int:
    return int.from_bytes(asm(src, base), "little")


REGS = {0: 0x0900_0000, 2: 3, 14: 0x4000_0000, 31: 0x4010_0000}  # 31: SP


def xreg(n: int) -> int:
    return REGS.get(n, 0)


# source, is_load, bytes, ISV, SAS, SSE, SRT, SF, AR, address
CASES = [
    ("strb w1, [x0, #4]", False, 1, 1, 0, 0, 1, 0, 0, 0x0900_0004),
    ("strh w3, [x0, #6]", False, 2, 1, 1, 0, 3, 0, 0, 0x0900_0006),
    ("str w1, [x0]", False, 4, 1, 2, 0, 1, 0, 0, 0x0900_0000),
    ("str x1, [sp, #16]", False, 8, 1, 3, 0, 1, 1, 0, 0x4010_0010),
    ("ldr w2, [x0, #0x18]", True, 4, 1, 2, 0, 2, 0, 0, 0x0900_0018),
    ("ldrsb x5, [x0]", True, 1, 1, 0, 1, 5, 1, 0, 0x0900_0000),
    ("ldrsb w5, [x0]", True, 1, 1, 0, 1, 5, 0, 0, 0x0900_0000),
    ("ldrsh x5, [x0, #2]", True, 2, 1, 1, 1, 5, 1, 0, 0x0900_0002),
    ("ldrsw x7, [x0, #4]", True, 4, 1, 2, 1, 7, 1, 0, 0x0900_0004),
    ("ldur w1, [x0, #-4]", True, 4, 1, 2, 0, 1, 0, 0, 0x08FF_FFFC),
    ("sttr w1, [x0, #1]", False, 4, 1, 2, 0, 1, 0, 0, 0x0900_0001),
    ("ldr w1, [x0, x2, lsl #2]", True, 4, 1, 2, 0, 1, 0, 0, 0x0900_000C),
    ("ldr x1, [x0, w2, sxtw #3]", True, 8, 1, 3, 0, 1, 1, 0, 0x0900_0018),
    ("ldar w1, [x14]", True, 4, 1, 2, 0, 1, 0, 1, 0x4000_0000),
    ("stlrh w1, [x14]", False, 2, 1, 1, 0, 1, 0, 1, 0x4000_0000),
    ("str wzr, [x0]", False, 4, 1, 2, 0, 31, 0, 0, 0x0900_0000),
    ("ldr w1, [x0, #4]!", True, 4, 0, 0, 0, 0, 0, 0, 0x0900_0004),
    ("ldr w1, [x0], #4", True, 4, 0, 0, 0, 0, 0, 0, 0x0900_0000),
    ("ldxr w1, [x0]", True, 4, 0, 0, 0, 0, 0, 0, 0x0900_0000),
    ("ldp w1, w2, [x0, #8]", True, 4, 0, 0, 0, 0, 0, 0, 0x0900_0008),
    ("stp x1, x2, [x0, #-16]!", False, 8, 0, 0, 0, 0, 0, 0, 0x08FF_FFF0),
    ("ldr q0, [x0, #16]", True, 16, 0, 0, 0, 0, 0, 0, 0x0900_0010),
    ("str s1, [x0]", False, 4, 0, 0, 0, 0, 0, 0, 0x0900_0000),
]


@pytest.mark.parametrize("src, is_load, size, isv, sas, sse, srt, sf, ar, address", CASES,
                         ids=[c[0] for c in CASES])
def test_load_store_decoding_gives_the_syndrome_the_hardware_reports(src, is_load, size, isv, sas,
                                                                     sse, srt, sf, ar, address):
    ls = decode(word(src))
    assert ls is not None
    assert (ls.is_load, ls.size, int(ls.isv)) == (is_load, size, isv)
    iss = ls.iss
    assert (iss >> 24 & 1, iss >> 22 & 3, iss >> 21 & 1, iss >> 16 & 31, iss >> 15 & 1,
            iss >> 14 & 1) == (isv, sas, sse, srt, sf, ar)
    assert ls.address(xreg, 0x1000) == address


def test_literal_load_is_pc_relative():
    ls = decode(word("ldr w3, #0x40", base=0x2000))
    assert ls.isv and ls.address(xreg, 0x2000) == 0x40


@pytest.mark.parametrize("src, wb, wb_imm", [
    ("ldr w1, [x0], #4", WB_POST, 4),
    ("str x1, [x0, #-8]!", WB_PRE, -8),
    ("ldr w1, [x0, #8]", WB_NONE, 0),
])
def test_writeback_forms_are_recognised(src, wb, wb_imm):
    ls = decode(word(src))
    assert (ls.wb, ls.wb_imm) == (wb, wb_imm)


@pytest.mark.parametrize("src", ["add x0, x0, #1", "prfm pldl1keep, [x0]", "hvc #0", "b #0x1000"])
def test_instructions_that_do_not_access_memory_decode_to_none(src):
    assert decode(word(src)) is None


def test_an_8_byte_register_is_merged_back_and_a_pair_is_not():
    assert decode(word("str x1, [x0]")).merge
    assert not decode(word("stp w1, w2, [x0]")).merge
    assert decode(word("stp x1, x2, [x0]")).total == 16
