"""The tables ``hvsim spec --arch intel_vtx`` shows, built from this plugin's own definitions."""

from __future__ import annotations

from hvsim.core.spec import SpecTable

from .exits import EXIT_REASONS


def tables() -> dict[str, SpecTable]:
    return {
        "exit-reasons": SpecTable(
            "VMX basic exit reasons", "Intel SDM Vol. 3D, Appendix C", ["reason", "name"],
            [[n, f"EXIT_REASON_{name}"] for n, name in sorted(EXIT_REASONS.items())]),
        "io-qualification": SpecTable(
            "Exit qualification for I/O instructions", "Intel SDM Vol. 3C, Table 28-5", ["bits", "meaning"],
            [["2:0", "size of access: 0 = 1 byte, 1 = 2 bytes, 3 = 4 bytes"],
             ["3", "direction: 0 = OUT, 1 = IN"], ["4", "string instruction (INS/OUTS)"],
             ["5", "REP prefixed"], ["6", "operand encoding: 0 = DX, 1 = immediate"],
             ["31:16", "port number"]]),
        "ept-violation-qualification": SpecTable(
            "Exit qualification for EPT violations", "Intel SDM Vol. 3C, Table 28-7", ["bit", "meaning"],
            [[0, "data read"], [1, "data write"], [2, "instruction fetch"],
             [3, "the translation allowed reads"], [4, "the translation allowed writes"],
             [5, "the translation allowed execution"], [7, "guest linear-address field valid"],
             [8, "access to the final translation (not a paging-structure entry)"]]),
    }
