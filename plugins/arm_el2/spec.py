"""The arm_el2 reference tables for ``hvsim spec --arch arm_el2``."""

from __future__ import annotations

from hvsim.core.spec import SpecTable

from . import exits as e
from . import el2, layout, psci, timer, traps

_ARM_ARM = "Arm ARM DDI 0487, D24.2 ESR_EL2"

_EXIT_CLASSES = [
    (e.ESR_ELx_EC_WFx, "WFI (TWI) / WFE (TWE)",
     "WFI: HALT exit, the vCPU waits for an interrupt; WFE: INSTRUCTION exit, completes and yields"),
    (e.ESR_ELx_EC_FP_ASIMD, "FP / Advanced SIMD access trapped by CPTR_EL2.TFP",
     "EXCEPTION exit; default: KVM's lazy FP switch (TFP cleared, the instruction reruns)"),
    (e.ESR_ELx_EC_HVC64, "HVC in AArch64 state", "HYPERCALL exit: PSCI / SMCCC, handled in place"),
    (e.ESR_ELx_EC_SMC64, "SMC in AArch64 state, trapped by HCR_EL2.TSC",
     "HYPERCALL exit: PSCI / SMCCC over the SMC conduit; without TSC: UNDEFINED to EL1"),
    (e.ESR_ELx_EC_SYS64, "MSR / MRS / SYS trapped (HCR_EL2 TVM TRVM TID1-3 TACR TIDCP TSW TPCP TPU "
     "TTLB TDZ; MDCR_EL2 TDA TDOSA TDRA TPM TPMCR; CNTHCTL_EL2 EL1PCTEN EL1PCEN)",
     "SYSREG exit, handled in place; the access is performed unless a plugin emulates it"),
    (e.ESR_ELx_EC_DABT_LOW, "Data Abort from a lower EL (stage 2)",
     "MMIO exit with the instruction syndrome; no device there: guest crash"),
    (e.ESR_ELx_EC_IABT_LOW, "Instruction Abort from a lower EL (stage 2)",
     "fetch from an IPA without RAM: synchronous external abort injected, as KVM"),
    (e.ESR_ELx_EC_ILL, "Illegal Execution state (the ERET to EL1 with HCR_EL2.TGE set)",
     "INVALID_STATE exit: the guest cannot be entered, the run ends"),
    (e.ESR_ELx_EC_UNKNOWN, "Unknown reason (to EL1)", "guest's own vector: UDF, SMC"),
    (e.ESR_ELx_EC_SVC64, "SVC in AArch64 state (to EL1)", "guest's own vector"),
    (e.ESR_ELx_EC_BRK64, "BRK in AArch64 state (to EL1)", "guest's own vector"),
    (e.ESR_ELx_EC_DABT_CUR, "Data Abort, same EL (to EL1)", "guest's own vector, stage-1 FSC"),
    (e.ESR_ELx_EC_IABT_CUR, "Instruction Abort, same EL (to EL1)", "guest's own vector"),
    (e.ESR_ELx_EC_SERROR, "SError (to EL1)", "virtual SError injected by the hypervisor"),
]

_ISS = {
    e.ESR_ELx_EC_WFx: "CV [24] = 1, COND [23:20] = 0b1110, TI [1:0]: 0b00 WFI, 0b01 WFE",
    e.ESR_ELx_EC_FP_ASIMD: "CV [24] = 1, COND [23:20] = 0b1110, [19:0] RES0",
    e.ESR_ELx_EC_HVC64: "imm16 [15:0]",
    e.ESR_ELx_EC_SMC64: "imm16 [15:0]",
    e.ESR_ELx_EC_SYS64: "Op0 [21:20], Op2 [19:17], Op1 [16:14], CRn [13:10], Rt [9:5], CRm [4:1], "
                        "Direction [0] (1 = read: MRS, SYSL)",
    e.ESR_ELx_EC_DABT_LOW: "ISV [24], SAS [23:22], SSE [21], SRT [20:16], SF [15], AR [14], WnR [6], DFSC [5:0]",
    e.ESR_ELx_EC_IABT_LOW: "IFSC [5:0] (0x10: synchronous external abort)",
    e.ESR_ELx_EC_UNKNOWN: "RES0",
    e.ESR_ELx_EC_ILL: "RES0",
    e.ESR_ELx_EC_SVC64: "imm16 [15:0]",
    e.ESR_ELx_EC_BRK64: "comment [15:0]",
    e.ESR_ELx_EC_DABT_CUR: "as a Data Abort; DFSC from the stage-1 walk",
    e.ESR_ELx_EC_IABT_CUR: "IFSC [5:0]",
    e.ESR_ELx_EC_SERROR: "RES0 (IDS 0)",
}

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
    "TWE": "WFE: INSTRUCTION exit (EC 0x01, TI 0b01), then the WFE completes and the vCPU yields",
    "TSC": "SMC from EL1: HYPERCALL exit (SMCCC)",
    "TVM": "MSR: SYSREG exit", "TRVM": "MRS: SYSREG exit",
    "TID0": "no effect: its registers (FPSID, JIDR) are AArch32 only",
    "TID1": "MRS: SYSREG exit", "TID2": "MRS/MSR: SYSREG exit", "TID3": "MRS: SYSREG exit",
    "TACR": "MRS/MSR: SYSREG exit",
    "TIDCP": "MRS/MSR of op0 3, CRn 11/15: SYSREG exit; UNDEFINED to the guest unless emulated",
    "TSW": "DC ISW/CSW/CISW: SYSREG exit (Op0 1)", "TPCP": "DC IVAC/CVAC/CIVAC: SYSREG exit",
    "TPU": "IC IVAU/IALLU/IALLUIS, DC CVAU: SYSREG exit", "TTLB": "TLBI (EL1): SYSREG exit",
    "TDZ": "DC ZVA: SYSREG exit",
    "TGE": "modelled as E2H = 0 requires: entering EL1 is an illegal exception return (run ends)",
    "RW": "always 1 in the engine (AArch64 EL1)",
    "VM": "kept; stage 2 is hvsim's memslots (MMIO aborts always trap)",
    "VI": "virtual IRQ pending while set (a level: taken again until cleared)",
    "VF": "virtual FIQ pending while set (a level: taken again until cleared)",
    "VSE": "virtual SError pending; cleared when taken (ESR_EL1 EC 0x2F, ISS 0: no FEAT_RAS)",
}

_SYSREG_HVSIM = {
    "HCR_EL2": "trap controls, see `spec hcr`",
    "CPTR_EL2": "TFP: FP/SIMD traps (EC 0x07); TCPAC: CPACR_EL1 accesses (EC 0x18); TTA kept (no System-register trace interface to trap); TAM RES0 (no FEAT_AMUv1)",
    "MDCR_EL2": "TDA/TDOSA/TDRA/TPM/TPMCR trap their registers (EC 0x18); HPMN, TDE kept",
    "HSTR_EL2": "kept; traps only AArch32 CP15 accesses, and hvsim's guests are AArch64",
    "VTTBR_EL2": "kept; stage 2 comes with the memory-virtualization issue",
    "VTCR_EL2": "kept; stage 2 comes with the memory-virtualization issue",
    "VBAR_EL2": "kept; hvsim's exit handlers are the EL2 vectors",
    "VPIDR_EL2": "the guest's MIDR_EL1", "VMPIDR_EL2": "the guest's MPIDR_EL1 (and PSCI's target_cpu)",
    "CNTHCTL_EL2": "EL1PCTEN/EL1PCEN clear: CNTPCT_EL0 / CNTP_* trap (EC 0x18)",
    "CNTVOFF_EL2": "CNTVCT_EL0 = CNTPCT_EL0 - CNTVOFF_EL2, and the virtual timer's deadline",
    "ESR_EL2": "set on every trap", "FAR_EL2": "set on every trap (aborts; else 0)",
    "HPFAR_EL2": "set on every trap (stage-2 aborts; else 0)",
    "ELR_EL2": "set on every trap: the preferred return address",
    "SPSR_EL2": "set on every trap: the guest's PSTATE",
}

_PSCI_HVSIM = {
    "PSCI_0_2_FN_PSCI_VERSION": "1.1", "PSCI_0_2_FN_CPU_SUSPEND": "standby as WFI; SUCCESS on wake",
    "PSCI_0_2_FN64_CPU_SUSPEND": "standby as WFI; SUCCESS on wake", "PSCI_0_2_FN_CPU_OFF": "vCPU off",
    "PSCI_0_2_FN_CPU_ON": "INVALID_PARAMETERS, ALREADY_ON, INVALID_ADDRESS, SUCCESS",
    "PSCI_0_2_FN64_CPU_ON": "INVALID_PARAMETERS, ALREADY_ON, INVALID_ADDRESS, SUCCESS",
    "PSCI_0_2_FN_AFFINITY_INFO": "ON 0 / OFF 1; level > 0: INVALID_PARAMETERS",
    "PSCI_0_2_FN64_AFFINITY_INFO": "ON 0 / OFF 1; level > 0: INVALID_PARAMETERS",
    "PSCI_0_2_FN_MIGRATE_INFO_TYPE": "2: no Trusted OS to migrate",
    "PSCI_0_2_FN_SYSTEM_OFF": "run ends, status 0", "PSCI_0_2_FN_SYSTEM_RESET": "run ends (as -no-reboot)",
    "PSCI_1_1_FN_SYSTEM_RESET2": "warm / vendor reset: run ends; else INVALID_PARAMETERS",
    "PSCI_1_1_FN64_SYSTEM_RESET2": "warm / vendor reset: run ends; else INVALID_PARAMETERS",
    "PSCI_1_0_FN_PSCI_FEATURES": "0 for the ids marked implemented, else NOT_SUPPORTED",
}


def _encoding(enc: tuple[int, int, int, int, int]) -> str:
    op0, op1, crn, crm, op2 = enc
    return f"S{op0}_{op1}_C{crn}_C{crm}_{op2}"


def _trap_rows() -> list[list]:
    names: dict[int, str] = {}
    for n, v in vars(el2).items():  # the first name of a bit is the Arm ARM's (TPCP before TPC)
        if n.startswith(("HCR_", "MDCR_EL2_", "CNTHCTL_", "CPTR_EL2_")) and isinstance(v, int) and v and v & (v - 1) == 0:
            names.setdefault((n.split("_")[0], v), n)
    rows = []
    for register, bit, reads, writes, sys, when_set in traps.SYSREG_TRAPS:
        field = names.get((register.split("_")[0], bit), hex(bit)).replace("HCR_", "").replace(
            "MDCR_EL2_", "").replace("CNTHCTL_", "").replace("CPTR_EL2_", "")
        what = []
        if reads:
            what.append(f"MRS of {len(reads)} encodings, e.g. {_encoding(reads[0])}")
        if writes:
            what.append(f"MSR of {len(writes)} encodings, e.g. {_encoding(writes[0])}")
        if sys:
            what.append(f"SYS {', '.join(_encoding(x) for x in sys[:3])}{' ...' if len(sys) > 3 else ''}")
        rows.append([f"{register}.{field}", "set" if when_set else "clear", "; ".join(what), 0x18])
    for bit, regs in traps.ICH_TRAPS:
        name = {traps.ICH_HCR_TC: "TC", traps.ICH_HCR_TALL0: "TALL0", traps.ICH_HCR_TALL1: "TALL1",
                traps.ICH_HCR_TDIR: "TDIR"}[bit]
        rows.append([f"ICH_HCR_EL2.{name}", "set", f"MRS/MSR of {len(regs)} ICC_* encodings, e.g. "
                     f"{_encoding(regs[0])}", 0x18])
    rows.append(["HCR_EL2.TWI", "set", "WFI", 0x01])
    rows.append(["HCR_EL2.TWE", "set", "WFE", 0x01])
    rows.append(["HCR_EL2.TSC", "set", "SMC at EL1", 0x17])
    rows.append(["CPTR_EL2.TFP", "set", "FP/SIMD instructions, MRS/MSR FPCR/FPSR", 0x07])
    return rows


def _bits(mask: int) -> int | str:
    low = (mask & -mask).bit_length() - 1
    high = mask.bit_length() - 1
    return low if low == high else f"{high}:{low}"


def _function_ids() -> list[tuple[int, str]]:
    return sorted((v, n) for n, v in vars(psci).items() if "_FN" in n or n.endswith("_FUNC_ID"))


def tables() -> dict[str, SpecTable]:
    return {
        "esr": SpecTable(
            "ESR_EL2 as hvsim writes it", _ARM_ARM + ": EC [31:26], IL [25] = 1 (32-bit instruction), ISS [24:0]",
            ["EC", "name", "cause", "ISS", "hvsim"],
            [[ec, e.EC_NAMES[ec], meaning, _ISS.get(ec, ""), what] for ec, meaning, what in _EXIT_CLASSES]),
        "sysregs": SpecTable(
            "The EL2 registers of each vCPU (vcpu.el2)", "Arm ARM DDI 0487, D23.2; reset: hvsim's (KVM's) values",
            ["register", "encoding", "RES0", "RES1", "reset", "hvsim"],
            [[name, _encoding(enc), res0, res1, "MIDR_EL1" if name == "VPIDR_EL2" else
              "the vCPU's MPIDR" if name == "VMPIDR_EL2" else reset, _SYSREG_HVSIM[name]]
             for name, (enc, res0, res1, reset) in el2.REGISTERS.items()]),
        "traps": SpecTable(
            "What each EL2 control traps", "Arm ARM DDI 0487, D23.2 HCR_EL2, MDCR_EL2, CNTHCTL_EL2, CPTR_EL2",
            ["control", "traps when", "instructions", "EC"], _trap_rows()),
        "timer": SpecTable(
            "The guest's timers", "Arm ARM DDI 0487, D12; Linux arm,armv8-timer binding",
            ["timer", "registers", "INTID", "offset"],
            [["virtual", "CNTV_CTL_EL0, CNTV_CVAL_EL0, CNTV_TVAL_EL0", timer.INTID_CNTV, "CNTVOFF_EL2"],
             ["EL1 physical", "CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTP_TVAL_EL0", timer.INTID_CNTP, "0"]]),
        "gic": SpecTable(
            "The GICv3 (QEMU virt layout) and its virtual CPU interface", "Arm GIC spec IHI 0069; QEMU hw/arm/virt.c",
            ["what", "where", "hvsim"],
            [["GICD", f"{layout.GICD_BASE:#x}, 64 KiB", "emulated by the vGIC (MMIO exits)"],
             ["GICR", f"{layout.GICR_BASE:#x} + n * {layout.GICR_STRIDE:#x}", "RD_base + SGI_base per vCPU"],
             ["ICH_LR<n>_EL2", "S3_4_C12_C12_n, n < 4", "vcpu.gic_cpuif.read/write('ICH_LR<n>_EL2')"],
             ["ICH_HCR/VTR/MISR/EISR/ELRSR/VMCR_EL2", "S3_4_C12_C11_{0,1,2,3,5,7}", "vcpu.gic_cpuif"],
             ["ICC_* at EL1 (IMO/FMO)", "S3_0_C12_*, S3_0_C4_C6_0", "ICV_* from the LRs, no exit"],
             ["ICC_SGI1R_EL1", "S3_0_C12_C11_5", "traps (IMO): SYSREG exit, then the SGI"],
             ["maintenance interrupt", "PPI 9 = INTID 25", "EVENT exit, vector 25"],
             ["virtual / EL1 physical timer", "INTID 27 / 30", "level, HW-mapped LR"],
             ["PL011", "SPI 1 = INTID 33", "level, EOI maintenance"]]),
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
            "PSCI 1.1 functions over HVC (and SMC with HCR_EL2.TSC)", "DEN0022 section 5; SMCCC DEN0028",
            ["function id", "name", "implemented", "hvsim"],
            [[fid, name, fid in psci.FUNCTIONS, _PSCI_HVSIM.get(name, "" if fid in psci.FUNCTIONS else "NOT_SUPPORTED")]
             for fid, name in _function_ids()]),
        "psci-returns": SpecTable(
            "PSCI return codes", "DEN0022 5.2.2", ["value", "name"],
            [[v, n] for n, v in vars(psci).items() if n.startswith("PSCI_RET_")]),
        "memory-map": SpecTable(
            "The virt platform's guest-physical map", "QEMU hw/arm/virt.c base_memmap",
            ["region", "base", "size"],
            [["RAM", layout.RAM_BASE, "--mem"], ["GICv3 distributor", layout.GICD_BASE, 0x1_0000],
             ["GICv3 redistributors", layout.GICR_BASE, "0x20000 per vCPU"],
             ["PL011 UART", layout.PL011_BASE, layout.PL011_SIZE],
             ["virtio-mmio", layout.VIRTIO_MMIO_BASE, "32 x 0x200"]]),
    }
