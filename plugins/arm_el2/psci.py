"""PSCI 1.1 over HVC, implemented by the hypervisor as KVM does (arch/arm64/kvm/psci.c).

Arm Power State Coordination Interface, DEN0022 (function ids in section 5, return codes in
5.2.2), called through the SMC Calling Convention, DEN0028: the function id is in W0, the
arguments in X1-X3 (W1-W3 for the SMC32 ids, bit 30 clear), the result goes back in X0.
Like KVM, a negative 32-bit result is written sign-extended, so NOT_SUPPORTED reads as
0xFFFF_FFFF_FFFF_FFFF in X0 whichever convention the caller used.
"""

from __future__ import annotations

from unicorn.arm64_const import UC_ARM64_REG_X1, UC_ARM64_REG_X2, UC_ARM64_REG_X3

from hvsim.core.arch import VcpuState

from . import layout

PSCI_0_2_FN_PSCI_VERSION = 0x8400_0000
PSCI_0_2_FN_CPU_SUSPEND = 0x8400_0001
PSCI_0_2_FN64_CPU_SUSPEND = 0xC400_0001
PSCI_0_2_FN_CPU_OFF = 0x8400_0002
PSCI_0_2_FN_CPU_ON = 0x8400_0003
PSCI_0_2_FN64_CPU_ON = 0xC400_0003
PSCI_0_2_FN_AFFINITY_INFO = 0x8400_0004
PSCI_0_2_FN64_AFFINITY_INFO = 0xC400_0004
PSCI_0_2_FN_MIGRATE = 0x8400_0005
PSCI_0_2_FN64_MIGRATE = 0xC400_0005
PSCI_0_2_FN_MIGRATE_INFO_TYPE = 0x8400_0006
PSCI_0_2_FN_MIGRATE_INFO_UP_CPU = 0x8400_0007
PSCI_0_2_FN64_MIGRATE_INFO_UP_CPU = 0xC400_0007
PSCI_0_2_FN_SYSTEM_OFF = 0x8400_0008
PSCI_0_2_FN_SYSTEM_RESET = 0x8400_0009
PSCI_1_0_FN_PSCI_FEATURES = 0x8400_000A
PSCI_1_0_FN_SYSTEM_SUSPEND = 0x8400_000E
PSCI_1_0_FN64_SYSTEM_SUSPEND = 0xC400_000E
PSCI_1_1_FN_SYSTEM_RESET2 = 0x8400_0012
PSCI_1_1_FN64_SYSTEM_RESET2 = 0xC400_0012

ARM_SMCCC_VERSION_FUNC_ID = 0x8000_0000  # DEN0028 section 7.2
ARM_SMCCC_ARCH_FEATURES_FUNC_ID = 0x8000_0001

PSCI_VERSION_1_1 = 0x0001_0001  # major in bits [31:16], minor in [15:0]
ARM_SMCCC_VERSION_1_1 = 0x0001_0001

PSCI_RET_SUCCESS = 0
PSCI_RET_NOT_SUPPORTED = -1
PSCI_RET_INVALID_PARAMS = -2
PSCI_RET_DENIED = -3
PSCI_RET_ALREADY_ON = -4
PSCI_RET_ON_PENDING = -5
PSCI_RET_INTERNAL_FAILURE = -6
PSCI_RET_INVALID_ADDRESS = -9

PSCI_0_2_AFFINITY_LEVEL_ON = 0
PSCI_0_2_AFFINITY_LEVEL_OFF = 1

PSCI_0_2_TOS_MP = 2  # MIGRATE_INFO_TYPE: no Trusted OS that needs migrating

# CPU_SUSPEND power_state, original format (DEN0022 5.4.2.1): StateID [15:0], StateType [16]
# (1 = power down), PowerLevel [25:24]; the other bits are reserved and must be zero.
PSCI_0_2_POWER_STATE_RESERVED = 0xFCFE_0000
# SYSTEM_RESET2 reset_type (5.16): bit 31 set = vendor-specific; architectural 0 = warm reset.
PSCI_1_1_RESET_TYPE_VENDOR_START = 1 << 31
PSCI_1_1_RESET_TYPE_SYSTEM_WARM_RESET = 0

_MASK64 = (1 << 64) - 1
_SMC64 = 1 << 30  # function id bit 30: the SMC64/HVC64 calling convention


def _arg(vcpu, fid: int, reg: int) -> int:
    value = vcpu.regs.read(reg)
    return value if fid & _SMC64 else value & 0xFFFF_FFFF


def _find_cpu(vcpu, target: int):
    target = layout.mpidr_affinity(target)
    for v in vcpu.vm.vcpus:
        if layout.mpidr_affinity(v.mpidr) == target:
            return v
    return None


def psci_version(vcpu, fid: int) -> int:
    return PSCI_VERSION_1_1


def cpu_off(vcpu, fid: int) -> None:
    """Power the calling vCPU down; it does not return (DEN0022 5.5)."""
    vcpu.power_off()


def cpu_on(vcpu, fid: int) -> int:
    """Start ``target_cpu`` at ``entry_point_address`` with X0 = ``context_id`` (DEN0022 5.6)."""
    target = _find_cpu(vcpu, _arg(vcpu, fid, UC_ARM64_REG_X1))
    if target is None:
        return PSCI_RET_INVALID_PARAMS
    if target.state is not VcpuState.OFF:
        return PSCI_RET_ALREADY_ON
    entry = _arg(vcpu, fid, UC_ARM64_REG_X2)
    if not vcpu.vm.memory.is_ram(entry, 4) or entry & 3:
        return PSCI_RET_INVALID_ADDRESS
    target.power_on(entry, _arg(vcpu, fid, UC_ARM64_REG_X3))
    return PSCI_RET_SUCCESS


def affinity_info(vcpu, fid: int) -> int:
    """ON (0) or OFF (1) for ``target_affinity``; only level 0 exists since PSCI 1.0 (5.7)."""
    if _arg(vcpu, fid, UC_ARM64_REG_X2) != 0:
        return PSCI_RET_INVALID_PARAMS
    target = _find_cpu(vcpu, _arg(vcpu, fid, UC_ARM64_REG_X1))
    if target is None:
        return PSCI_RET_INVALID_PARAMS
    return PSCI_0_2_AFFINITY_LEVEL_OFF if target.state is VcpuState.OFF else PSCI_0_2_AFFINITY_LEVEL_ON


def cpu_suspend(vcpu, fid: int) -> int | None:
    """CPU_SUSPEND (DEN0022 5.4) as KVM implements it (kvm_psci_vcpu_suspend): every power
    state is entered as standby, i.e. like WFI; the call returns SUCCESS when an interrupt
    wakes the vCPU (a shallower state than a power-down request is allowed, 5.4.2). A
    power_state with reserved bits set is INVALID_PARAMETERS."""
    if _arg(vcpu, fid, UC_ARM64_REG_X1) & 0xFFFF_FFFF & PSCI_0_2_POWER_STATE_RESERVED:
        return PSCI_RET_INVALID_PARAMS
    vcpu.smccc_return(PSCI_RET_SUCCESS)
    vcpu.suspend()
    return None


def migrate_info_type(vcpu, fid: int) -> int:
    return PSCI_0_2_TOS_MP


def system_off(vcpu, fid: int) -> None:
    vcpu.vm.stop(0, "PSCI SYSTEM_OFF")


def system_reset(vcpu, fid: int) -> None:
    # hvsim behaves as QEMU with -no-reboot: a reset ends the run.
    vcpu.vm.stop(0, "PSCI SYSTEM_RESET")


def system_reset2(vcpu, fid: int) -> int | None:
    """SYSTEM_RESET2 (DEN0022 5.16): the architectural SYSTEM_WARM_RESET or a vendor-specific
    reset (bit 31) ends the run as SYSTEM_RESET does; any other architectural reset_type is
    INVALID_PARAMETERS (KVM's check)."""
    reset_type = vcpu.regs.read(UC_ARM64_REG_X1) & 0xFFFF_FFFF
    if reset_type & PSCI_1_1_RESET_TYPE_VENDOR_START or reset_type == PSCI_1_1_RESET_TYPE_SYSTEM_WARM_RESET:
        kind = "vendor-specific" if reset_type else "SYSTEM_WARM_RESET"
        vcpu.vm.stop(0, f"PSCI SYSTEM_RESET2 ({kind})")
        return None
    return PSCI_RET_INVALID_PARAMS


def psci_features(vcpu, fid: int) -> int:
    """For an implemented function id 0, NOT_SUPPORTED otherwise (DEN0022 5.15). For
    CPU_SUSPEND the 0 is its feature flags: the original power_state format (bit 1 clear)
    and platform-coordinated mode only (bit 0 clear), as KVM answers."""
    queried = vcpu.regs.read(UC_ARM64_REG_X1) & 0xFFFF_FFFF
    return PSCI_RET_SUCCESS if queried in FUNCTIONS else PSCI_RET_NOT_SUPPORTED


def smccc_version(vcpu, fid: int) -> int:
    return ARM_SMCCC_VERSION_1_1


def smccc_arch_features(vcpu, fid: int) -> int:
    # No firmware workarounds (ARCH_WORKAROUND_1/2/3) are needed in a simulator.
    return PSCI_RET_NOT_SUPPORTED


# The function-id table, like KVM's switch in kvm_psci_1_x_call(). Not here, so
# NOT_SUPPORTED as with KVM: MIGRATE and MIGRATE_INFO_UP_CPU (MIGRATE_INFO_TYPE says no
# Trusted OS needs migrating), SYSTEM_SUSPEND (optional; KVM offers it only if the VMM asks),
# CPU_FREEZE, CPU_DEFAULT_SUSPEND, NODE_HW_STATE, the residency and statistics calls.
FUNCTIONS = {
    PSCI_0_2_FN_PSCI_VERSION: psci_version,
    PSCI_0_2_FN_CPU_SUSPEND: cpu_suspend,
    PSCI_0_2_FN64_CPU_SUSPEND: cpu_suspend,
    PSCI_0_2_FN_CPU_OFF: cpu_off,
    PSCI_0_2_FN_CPU_ON: cpu_on,
    PSCI_0_2_FN64_CPU_ON: cpu_on,
    PSCI_0_2_FN_AFFINITY_INFO: affinity_info,
    PSCI_0_2_FN64_AFFINITY_INFO: affinity_info,
    PSCI_0_2_FN_MIGRATE_INFO_TYPE: migrate_info_type,
    PSCI_0_2_FN_SYSTEM_OFF: system_off,
    PSCI_0_2_FN_SYSTEM_RESET: system_reset,
    PSCI_1_1_FN_SYSTEM_RESET2: system_reset2,
    PSCI_1_1_FN64_SYSTEM_RESET2: system_reset2,
    PSCI_1_0_FN_PSCI_FEATURES: psci_features,
    ARM_SMCCC_VERSION_FUNC_ID: smccc_version,
    ARM_SMCCC_ARCH_FEATURES_FUNC_ID: smccc_arch_features,
}

NOT_SUPPORTED_X0 = PSCI_RET_NOT_SUPPORTED & _MASK64

# Calls whose answer never changes, answered without a function call (the hot path).
CONSTANTS = {
    PSCI_0_2_FN_PSCI_VERSION: PSCI_VERSION_1_1,
    PSCI_0_2_FN_MIGRATE_INFO_TYPE: PSCI_0_2_TOS_MP,
    ARM_SMCCC_VERSION_FUNC_ID: ARM_SMCCC_VERSION_1_1,
}


def handle_hvc(vcpu, exit) -> None:
    """The HYPERCALL exit handler: an SMCCC call through ``HVC #0``, or ``SMC #0`` trapped by
    HCR_EL2.TSC (the SMC conduit; KVM's handle_smc() ends in the same SMCCC handler).

    SMCCC reserves non-zero HVC immediates; like an unknown function id they get
    NOT_SUPPORTED. A plugin that wants other immediates wraps this handler.
    """
    if exit.value:
        vcpu.smccc_return(NOT_SUPPORTED_X0)
        return
    fid = vcpu.smccc_x0 & 0xFFFF_FFFF  # X0 as the HVC found it, read with PC in one call
    result = CONSTANTS.get(fid)
    if result is None:
        fn = FUNCTIONS.get(fid)
        if fn is None:
            result = NOT_SUPPORTED_X0
        else:
            result = fn(vcpu, fid)
            if result is None:
                return
    vcpu.smccc_return(result)
