"""The tables ``hvsim spec --arch intel_vtx`` shows, built from this plugin's own definitions."""

from __future__ import annotations

from hvsim.core.spec import SpecTable

from . import msrs
from .exits import EXIT_REASONS, EXIT_CAUSES
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
        "exit-causes": SpecTable(
            "The exit reasons hvsim's VMX produces, and on what", "Intel SDM Vol. 3C 26.1-26.2, 28.2",
            ["reason", "name", "hvsim exits on"],
            [[n, f"EXIT_REASON_{EXIT_REASONS[n]}", cause] for n, cause in sorted(EXIT_CAUSES.items())]),
        "cr-qualification": SpecTable(
            "Exit qualification for control-register accesses", "Intel SDM Vol. 3C, Table 28-3", ["bits", "meaning"],
            [["3:0", "control register (0 for CLTS and LMSW)"],
             ["5:4", "access type: 0 MOV to CR, 1 MOV from CR, 2 CLTS, 3 LMSW"],
             ["6", "LMSW operand type: 0 register, 1 memory"], ["11:8", "MOV CR: the general-purpose register"],
             ["31:16", "LMSW source data"]]),
        "dr-qualification": SpecTable(
            "Exit qualification for MOV DR", "Intel SDM Vol. 3C, Table 28-4", ["bits", "meaning"],
            [["2:0", "debug register"], ["4", "direction: 0 MOV to DR, 1 MOV from DR"],
             ["11:8", "the general-purpose register"]]),
        "instruction-information": SpecTable(
            "VM-exit instruction-information field", "Intel SDM Vol. 3C 28.2.5, Tables 28-9 to 28-15",
            ["bits", "meaning", "used by"],
            [["1:0", "scaling: 0 none, 1 by 2, 2 by 4, 3 by 8", "memory operands"],
             ["6:3", "Reg1: the register operand", "LLDT/LTR/SLDT/STR, VMREAD/VMWRITE (register form); RDRAND/RDSEED destination"],
             ["9:7", "address size: 0 16-bit, 1 32-bit, 2 64-bit", "memory operands"],
             ["10", "Mem/Reg: 0 memory, 1 register", "LLDT/LTR/SLDT/STR, VMREAD/VMWRITE"],
             ["11", "operand size: 0 16-bit, 1 32-bit", "LGDT/LIDT/SGDT/SIDT"],
             ["12:11", "operand size: 0 16-bit, 1 32-bit, 2 64-bit", "RDRAND/RDSEED"],
             ["17:15", "segment register: 0 ES, 1 CS, 2 SS, 3 DS, 4 FS, 5 GS", "memory operands"],
             ["21:18", "index register", "memory operands"], ["22", "index register invalid", "memory operands"],
             ["26:23", "base register", "memory operands"], ["27", "base register invalid", "memory operands"],
             ["29:28", "instruction identity: 0 SGDT/SLDT, 1 SIDT/STR, 2 LGDT/LLDT, 3 LIDT/LTR", "descriptor tables"],
             ["31:28", "Reg2: the field encoding (VMREAD/VMWRITE), the type (INVEPT/INVPCID/INVVPID)", "VMX, INVPCID"]]),
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
