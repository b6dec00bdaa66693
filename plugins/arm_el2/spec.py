"""The arm_el2 reference tables for ``hvsim spec --arch arm_el2``."""

from __future__ import annotations

from hvsim.core.spec import SpecTable

from . import exits as e
from . import layout, psci

_ARM_ARM = "Arm ARM DDI 0487, D24.2 ESR_EL2"

_EXIT_CLASSES = [
    (e.ESR_ELx_EC_WFx, "WFI / WFE", "HALT exit: the vCPU waits for a virtual interrupt"),
    (e.ESR_ELx_EC_HVC64, "HVC in AArch64 state", "HYPERCALL exit: PSCI / SMCCC, handled in place"),
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
