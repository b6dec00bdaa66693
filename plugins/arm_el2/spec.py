"""The arm_el2 reference tables for ``hvsim spec --arch arm_el2``."""

from __future__ import annotations

from hvsim.core.spec import SpecTable

from . import exits as e
from . import el2, layout, psci

_ARM_ARM = "Arm ARM DDI 0487, D24.2 ESR_EL2"

_EXIT_CLASSES = [
    (e.ESR_ELx_EC_WFx, "WFI / WFE", "HALT exit: the vCPU waits for a virtual interrupt"),
    (e.ESR_ELx_EC_HVC64, "HVC in AArch64 state", "HYPERCALL exit: PSCI / SMCCC, handled in place"),
    (e.ESR_ELx_EC_SMC64, "SMC in AArch64 state, trapped by HCR_EL2.TSC",
     "HYPERCALL exit: PSCI / SMCCC over the SMC conduit; without TSC: UNDEFINED to EL1"),
    (e.ESR_ELx_EC_SYS64, "MSR / MRS trapped (TVM, TRVM, TID1-3, TACR)",
     "SYSREG exit, handled in place; the access is performed unless a plugin emulates it"),
    (e.ESR_ELx_EC_DABT_LOW, "Data Abort from a lower EL (stage 2)",
     "MMIO exit with the instruction syndrome; no device there: guest crash"),
    (e.ESR_ELx_EC_IABT_LOW, "Instruction Abort from a lower EL (stage 2)",
     "fetch from an IPA without RAM: synchronous external abort injected, as KVM"),
    (e.ESR_ELx_EC_UNKNOWN, "Unknown reason (to EL1)", "guest's own vector: UDF, SMC"),
    (e.ESR_ELx_EC_SVC64, "SVC in AArch64 state (to EL1)", "guest's own vector"),
    (e.ESR_ELx_EC_BRK64, "BRK in AArch64 state (to EL1)", "guest's own vector"),
    (e.ESR_ELx_EC_DABT_CUR, "Data Abort, same EL (to EL1)", "guest's own vector, stage-1 FSC"),
    (e.ESR_ELx_EC_IABT_CUR, "Instruction Abort, same EL (to EL1)", "guest's own vector"),
    (e.ESR_ELx_EC_SERROR, "SError (to EL1)", "virtual SError injected by the hypervisor"),
]

_DABT_ISS = [
    ("ISV", "24", "instruction syndrome valid: single GPR load/store without writeback"),
    ("SAS", "23:22", "access size: 0 byte, 1 halfword, 2 word, 3 doubleword"),
    ("SSE", "21", "the load sign-extends"),
    ("SRT", "20:16", "transfer register Xt"),
    ("SF", "15", "Xt is 64 bits wide"),
    ("AR", "14", "acquire / release"),
    ("WnR", "6", "write, not read"),
    ("DFSC", "5:0", "0b0001LL translation fault at level LL (stage 2: no entry for the IPA)"),
]


_HCR_HVSIM = {
    "TWI": "WFI: HALT exit; clear: the vCPU waits in the guest",
    "TSC": "SMC from EL1: HYPERCALL exit (SMCCC)",
    "TVM": "MSR: SYSREG exit", "TRVM": "MRS: SYSREG exit",
    "TID1": "MRS: SYSREG exit", "TID2": "MRS/MSR: SYSREG exit", "TID3": "MRS: SYSREG exit",
    "TACR": "MRS/MSR: SYSREG exit", "RW": "always 1 in the engine (AArch64 EL1)",
    "TWE": "kept; WFE is not trapped yet (Unicorn does not stop on WFE)",
    "VM": "kept; stage 2 is hvsim's memslots (MMIO aborts always trap)",
}


def _bits(mask: int) -> int | str:
    low = (mask & -mask).bit_length() - 1
    high = mask.bit_length() - 1
    return low if low == high else f"{high}:{low}"


def _function_ids() -> list[tuple[int, str]]:
    return sorted((v, n) for n, v in vars(psci).items() if "_FN" in n or n.endswith("_FUNC_ID"))


def tables() -> dict[str, SpecTable]:
    return {
        "exit-classes": SpecTable(
            "Exception classes hvsim produces", _ARM_ARM + ", EC field; names from Linux esr.h",
            ["EC", "name", "meaning", "hvsim"],
            [[ec, e.EC_NAMES[ec], meaning, what] for ec, meaning, what in _EXIT_CLASSES]),
        "data-abort-iss": SpecTable(
            "ISS of a Data Abort taken to EL2", _ARM_ARM + ", ISS encoding for a Data Abort",
            ["field", "bits", "meaning"], [list(row) for row in _DABT_ISS]),
        "hcr": SpecTable(
            "HCR_EL2 fields", "Arm ARM DDI 0487, D23.2 HCR_EL2; default: KVM's vcpu_reset_hcr()",
            ["field", "bit", "meaning", "default", "hvsim"],
            [[name, _bits(mask), meaning, int(bool(el2.HCR_EL2_DEFAULT & mask)),
              _HCR_HVSIM.get(name, "kept, read back; no effect")] for name, mask, meaning in el2.HCR_FIELDS]),
        "psci": SpecTable(
            "PSCI 1.1 functions over HVC", "DEN0022 section 5; SMCCC DEN0028",
            ["function id", "name", "implemented"],
            [[fid, name, fid in psci.FUNCTIONS] for fid, name in _function_ids()]),
        "memory-map": SpecTable(
            "The virt platform's guest-physical map", "QEMU hw/arm/virt.c base_memmap",
            ["region", "base", "size"],
            [["RAM", layout.RAM_BASE, "--mem"], ["GICv3 distributor", layout.GICD_BASE, 0x1_0000],
             ["GICv3 redistributors", layout.GICR_BASE, "0x20000 per vCPU"],
             ["PL011 UART", layout.PL011_BASE, layout.PL011_SIZE],
             ["virtio-mmio", layout.VIRTIO_MMIO_BASE, "32 x 0x200"]]),
    }
