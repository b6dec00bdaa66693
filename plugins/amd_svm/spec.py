"""The tables ``hvsim spec --arch amd_svm`` shows, built from this plugin's own definitions."""

from __future__ import annotations

from hvsim.core.spec import SpecTable

from .exits import EXIT_CODES
from .svm import CHECKS
from .vmcb import FIELDS, INTERCEPTS, Clean
from .vmm import HONOURED


# Linux's name for the unit at each control-area offset (arch/x86/include/asm/svm.h, struct
# vmcb_control_area): V_TPR ... AVIC_ENABLE are bits of int_ctl, INTERRUPT_SHADOW of int_state.
LINUX_CONTROL = {0x03C: "pause_filter_thresh", 0x03E: "pause_filter_count", 0x040: "iopm_base_pa",
                 0x048: "msrpm_base_pa", 0x050: "tsc_offset", 0x058: "asid", 0x05C: "tlb_ctl", 0x060: "int_ctl",
                 0x064: "int_vector", 0x068: "int_state", 0x070: "exit_code", 0x078: "exit_info_1",
                 0x080: "exit_info_2", 0x088: "exit_int_info", 0x090: "nested_ctl", 0x098: "avic_vapic_bar",
                 0x0A0: "ghcb_gpa", 0x0A8: "event_inj", 0x0B0: "nested_cr3", 0x0B8: "virt_ext", 0x0C0: "clean",
                 0x0C8: "next_rip", 0x0D0: "insn_len", 0x0D1: "insn_bytes", 0x0E0: "avic_backing_page",
                 0x0F0: "avic_logical_id", 0x0F8: "avic_physical_id", 0x108: "vmsa_pa",
                 0x138: "allowed_sev_features", 0x140: "guest_sev_features"}


def tables() -> dict[str, SpecTable]:
    return {
        "exit-codes": SpecTable(
            "SVM intercept exit codes (VMCB EXITCODE)", "AMD APM Vol. 2, Appendix C", ["code", "name"],
            [[code, f"VMEXIT_{name}"] for code, name in sorted(EXIT_CODES.items())]),
        "ioio-exitinfo1": SpecTable(
            "EXITINFO1 for IOIO intercepts", "AMD APM Vol. 2, 15.10.2, Figure 15-2", ["bits", "meaning"],
            [["0", "TYPE: 1 = IN, 0 = OUT"], ["2", "STR: string instruction"], ["3", "REP prefixed"],
             ["4", "SZ8"], ["5", "SZ16"], ["6", "SZ32"], ["7", "A16"], ["8", "A32"], ["9", "A64"],
             ["12:10", "SEG: effective segment (string instructions)"], ["31:16", "PORT"]]),
        "npf-exitinfo1": SpecTable(
            "EXITINFO1 for nested page faults", "AMD APM Vol. 2, 15.25.6", ["bit", "meaning"],
            [[0, "P: the nested entry was present"], [1, "RW: a write"], [2, "US: user access"],
             [3, "RSV: reserved bit set"], [4, "ID: instruction fetch"],
             [32, "the fault was on the final guest-physical address"],
             [33, "the fault was on a guest page-table access"]]),
        "vmcb": SpecTable(
            "VMCB fields (control area, then state-save area from 0x400)", "AMD APM Vol. 2, Appendix B, "
            "Tables B-1 and B-2; clean bits 15.15.3",
            ["offset", "bits", "width", "name", "area", "clean_bit", "linux"],
            [[f"{f.offset:#05x}", f.bit_range, f.width, f.name, f.area,
              "" if f.clean is None else f"{int(f.clean)} ({Clean(f.clean).name})",
              LINUX_CONTROL.get(f.offset, "") if f.area == "control" else ""] for f in FIELDS]),
        "intercepts": SpecTable(
            "VMCB intercept vectors and the exit code each intercept produces",
            "AMD APM Vol. 2, Table B-1 (0x000-0x014) and Appendix C",
            ["offset", "bit", "name", "exit_code", "exit_name", "hvsim"],
            [[f"{i.offset:#05x}", i.bit, i.name, f"{i.exit_code:#x}", i.exit_name,
              "honoured" if i.name in HONOURED else ""] for i in INTERCEPTS]),
        "vmrun-checks": SpecTable(
            "VMRUN consistency checks: any of these is #VMEXIT with EXITCODE VMEXIT_INVALID (-1)",
            "AMD APM Vol. 2, 15.5.1", ["check", "illegal state"], [[k, v] for k, v in CHECKS.items()]),
    }
