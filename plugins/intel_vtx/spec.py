"""The tables ``hvsim spec --arch intel_vtx`` shows, built from this plugin's own definitions."""

from __future__ import annotations

from hvsim.core.spec import SpecTable

from . import msrs
from .exits import EXIT_REASONS
from .vmcs import COMPONENTS, REQUIRES, TYPE_NAMES, WIDTH_NAMES, Encoding
from .vmx import VMX_INSTRUCTION_ERRORS


def _vmcs_table(caps: msrs.VmxCapabilities) -> SpecTable:
    rows = []
    for c in sorted(COMPONENTS.values(), key=lambda c: c.encoding):
        e = Encoding.of(c.encoding)
        width = "64-bit (HIGH: bits 63:32)" if c.high else WIDTH_NAMES[e.width]
        rows.append([f"{c.encoding:#06x}", c.name, width, TYPE_NAMES[e.type],
                     " or ".join(REQUIRES.get(c.field, ())) or "-",
                     "yes" if int(c.field) in caps.supported_fields else "no"])
    return SpecTable("VMCS fields and their encodings", "Intel SDM Vol. 3D, Appendix B; Vol. 3C 24.11.2",
                     ["encoding", "name", "width", "type", "exists with", "hvsim"], rows)


def _controls_table(caps: msrs.VmxCapabilities) -> SpecTable:
    rows = []
    for field, bit, name, title in msrs.CONTROLS:
        allowed0 = caps.allowed0.get(field, 0) >> bit & 1
        allowed1 = caps.allowed1.get(field, 0) >> bit & 1
        setting = "must be 1" if allowed0 else ("0 or 1" if allowed1 else "must be 0")
        rows.append([field, bit, name, title, setting])
    return SpecTable("VMX controls (settings allowed by hvsim's TRUE capability MSRs)",
                     "Intel SDM Vol. 3C 25.6.1, 25.6.2, 25.7.1, 25.8.1; Vol. 3D A.2-A.5, A.11",
                     ["control field", "bit", "name", "SDM name", "hvsim"], rows)


def _msrs_table(caps: msrs.VmxCapabilities) -> SpecTable:
    rows = []
    for index, value in sorted(caps.msrs.items()):
        rows.append([f"{index:#x}", msrs.MSR_NAMES[index], f"{value:#018x}", msrs.describe(index, value)])
    return SpecTable("VMX capability MSRs of hvsim's processor", "Intel SDM Vol. 3D, Appendix A",
                     ["msr", "name", "value", "meaning"], rows)


def tables() -> dict[str, SpecTable]:
    caps = msrs.VmxCapabilities()
    return {
        "vmcs": _vmcs_table(caps),
        "controls": _controls_table(caps),
        "errors": SpecTable(
            "VM-instruction error numbers", "Intel SDM Vol. 3C 31.4, Table 31-1", ["number", "description"],
            [[n, text] for n, text in sorted(VMX_INSTRUCTION_ERRORS.items())]),
        "msrs": _msrs_table(caps),
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
