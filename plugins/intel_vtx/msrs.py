"""VMX capability MSRs (Intel SDM Vol. 3D Appendix A) and the VMX control bits (SDM Vol. 3C 25.6.1,
25.6.2, 25.7.1, 25.8.1): what hvsim's logical processor says it can do.

Control-bit names are Linux's (``asm/vmx.h``); bits Linux does not name carry a name in the same
style. :class:`VmxCapabilities` turns "which controls hvsim models" into the MSR values a VMM
reads, so there is one source for the allowed settings, the supported VMCS fields and
IA32_VMX_VMCS_ENUM.
"""

from __future__ import annotations

from .vmcs import REQUIRES, Encoding, Field, VmcsRegion

# -- MSR numbers (SDM Vol. 4, Table 2-2) ----------------------------------------------------------
IA32_FEATURE_CONTROL = 0x3A
IA32_VMX_BASIC = 0x480
IA32_VMX_PINBASED_CTLS = 0x481
IA32_VMX_PROCBASED_CTLS = 0x482
IA32_VMX_EXIT_CTLS = 0x483
IA32_VMX_ENTRY_CTLS = 0x484
IA32_VMX_MISC = 0x485
IA32_VMX_CR0_FIXED0 = 0x486
IA32_VMX_CR0_FIXED1 = 0x487
IA32_VMX_CR4_FIXED0 = 0x488
IA32_VMX_CR4_FIXED1 = 0x489
IA32_VMX_VMCS_ENUM = 0x48A
IA32_VMX_PROCBASED_CTLS2 = 0x48B
IA32_VMX_EPT_VPID_CAP = 0x48C
IA32_VMX_TRUE_PINBASED_CTLS = 0x48D
IA32_VMX_TRUE_PROCBASED_CTLS = 0x48E
IA32_VMX_TRUE_EXIT_CTLS = 0x48F
IA32_VMX_TRUE_ENTRY_CTLS = 0x490
IA32_VMX_VMFUNC = 0x491

FEATURE_CONTROL_LOCKED = 1 << 0
FEATURE_CONTROL_VMXON_INSIDE_SMX = 1 << 1
FEATURE_CONTROL_VMXON_OUTSIDE_SMX = 1 << 2

# -- the control fields and their bits ------------------------------------------------------------
PIN, PROC, PROC2, EXIT, ENTRY, PROC3, VMFUNC = (
    "pin-based VM-execution controls", "primary processor-based VM-execution controls",
    "secondary processor-based VM-execution controls", "primary VM-exit controls",
    "VM-entry controls", "tertiary processor-based VM-execution controls", "VM-function controls")

CONTROLS: list[tuple[str, int, str, str]] = [  # (control field, bit, name, SDM's name)
    (PIN, 0, "PIN_BASED_EXT_INTR_MASK", "External-interrupt exiting"),
    (PIN, 3, "PIN_BASED_NMI_EXITING", "NMI exiting"),
    (PIN, 5, "PIN_BASED_VIRTUAL_NMIS", "Virtual NMIs"),
    (PIN, 6, "PIN_BASED_VMX_PREEMPTION_TIMER", "Activate VMX-preemption timer"),
    (PIN, 7, "PIN_BASED_POSTED_INTR", "Process posted interrupts"),
    (PROC, 2, "CPU_BASED_INTR_WINDOW_EXITING", "Interrupt-window exiting"),
    (PROC, 3, "CPU_BASED_USE_TSC_OFFSETTING", "Use TSC offsetting"),
    (PROC, 7, "CPU_BASED_HLT_EXITING", "HLT exiting"),
    (PROC, 9, "CPU_BASED_INVLPG_EXITING", "INVLPG exiting"),
    (PROC, 10, "CPU_BASED_MWAIT_EXITING", "MWAIT exiting"),
    (PROC, 11, "CPU_BASED_RDPMC_EXITING", "RDPMC exiting"),
    (PROC, 12, "CPU_BASED_RDTSC_EXITING", "RDTSC exiting"),
    (PROC, 15, "CPU_BASED_CR3_LOAD_EXITING", "CR3-load exiting"),
    (PROC, 16, "CPU_BASED_CR3_STORE_EXITING", "CR3-store exiting"),
    (PROC, 17, "CPU_BASED_ACTIVATE_TERTIARY_CONTROLS", "Activate tertiary controls"),
    (PROC, 19, "CPU_BASED_CR8_LOAD_EXITING", "CR8-load exiting"),
    (PROC, 20, "CPU_BASED_CR8_STORE_EXITING", "CR8-store exiting"),
    (PROC, 21, "CPU_BASED_TPR_SHADOW", "Use TPR shadow"),
    (PROC, 22, "CPU_BASED_NMI_WINDOW_EXITING", "NMI-window exiting"),
    (PROC, 23, "CPU_BASED_MOV_DR_EXITING", "MOV-DR exiting"),
    (PROC, 24, "CPU_BASED_UNCOND_IO_EXITING", "Unconditional I/O exiting"),
    (PROC, 25, "CPU_BASED_USE_IO_BITMAPS", "Use I/O bitmaps"),
    (PROC, 27, "CPU_BASED_MONITOR_TRAP_FLAG", "Monitor trap flag"),
    (PROC, 28, "CPU_BASED_USE_MSR_BITMAPS", "Use MSR bitmaps"),
    (PROC, 29, "CPU_BASED_MONITOR_EXITING", "MONITOR exiting"),
    (PROC, 30, "CPU_BASED_PAUSE_EXITING", "PAUSE exiting"),
    (PROC, 31, "CPU_BASED_ACTIVATE_SECONDARY_CONTROLS", "Activate secondary controls"),
    (PROC2, 0, "SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES", "Virtualize APIC accesses"),
    (PROC2, 1, "SECONDARY_EXEC_ENABLE_EPT", "Enable EPT"),
    (PROC2, 2, "SECONDARY_EXEC_DESC", "Descriptor-table exiting"),
    (PROC2, 3, "SECONDARY_EXEC_ENABLE_RDTSCP", "Enable RDTSCP"),
    (PROC2, 4, "SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE", "Virtualize x2APIC mode"),
    (PROC2, 5, "SECONDARY_EXEC_ENABLE_VPID", "Enable VPID"),
    (PROC2, 6, "SECONDARY_EXEC_WBINVD_EXITING", "WBINVD exiting"),
    (PROC2, 7, "SECONDARY_EXEC_UNRESTRICTED_GUEST", "Unrestricted guest"),
    (PROC2, 8, "SECONDARY_EXEC_APIC_REGISTER_VIRT", "APIC-register virtualization"),
    (PROC2, 9, "SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY", "Virtual-interrupt delivery"),
    (PROC2, 10, "SECONDARY_EXEC_PAUSE_LOOP_EXITING", "PAUSE-loop exiting"),
    (PROC2, 11, "SECONDARY_EXEC_RDRAND_EXITING", "RDRAND exiting"),
    (PROC2, 12, "SECONDARY_EXEC_ENABLE_INVPCID", "Enable INVPCID"),
    (PROC2, 13, "SECONDARY_EXEC_ENABLE_VMFUNC", "Enable VM functions"),
    (PROC2, 14, "SECONDARY_EXEC_SHADOW_VMCS", "VMCS shadowing"),
    (PROC2, 15, "SECONDARY_EXEC_ENCLS_EXITING", "Enable ENCLS exiting"),
    (PROC2, 16, "SECONDARY_EXEC_RDSEED_EXITING", "RDSEED exiting"),
    (PROC2, 17, "SECONDARY_EXEC_ENABLE_PML", "Enable PML"),
    (PROC2, 18, "SECONDARY_EXEC_EPT_VIOLATION_VE", "EPT-violation #VE"),
    (PROC2, 19, "SECONDARY_EXEC_PT_CONCEAL_VMX", "Conceal VMX from PT"),
    (PROC2, 20, "SECONDARY_EXEC_ENABLE_XSAVES", "Enable XSAVES/XRSTORS"),
    (PROC2, 22, "SECONDARY_EXEC_MODE_BASED_EPT_EXEC", "Mode-based execute control for EPT"),
    (PROC2, 23, "SECONDARY_EXEC_ENABLE_SPP", "Sub-page write permissions for EPT"),
    (PROC2, 24, "SECONDARY_EXEC_PT_USE_GPA", "Intel PT uses guest physical addresses"),
    (PROC2, 25, "SECONDARY_EXEC_TSC_SCALING", "Use TSC scaling"),
    (PROC2, 26, "SECONDARY_EXEC_ENABLE_USR_WAIT_PAUSE", "Enable user wait and pause"),
    (PROC2, 28, "SECONDARY_EXEC_ENCLV_EXITING", "Enable ENCLV exiting"),
    (PROC2, 30, "SECONDARY_EXEC_BUS_LOCK_DETECTION", "VMM bus-lock detection"),
    (PROC2, 31, "SECONDARY_EXEC_NOTIFY_VM_EXITING", "Instruction timeout"),
    (PROC3, 4, "TERTIARY_EXEC_IPI_VIRT", "IPI virtualization"),
    (EXIT, 2, "VM_EXIT_SAVE_DEBUG_CONTROLS", "Save debug controls"),
    (EXIT, 9, "VM_EXIT_HOST_ADDR_SPACE_SIZE", "Host address-space size"),
    (EXIT, 12, "VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL", "Load IA32_PERF_GLOBAL_CTRL"),
    (EXIT, 15, "VM_EXIT_ACK_INTR_ON_EXIT", "Acknowledge interrupt on exit"),
    (EXIT, 18, "VM_EXIT_SAVE_IA32_PAT", "Save IA32_PAT"),
    (EXIT, 19, "VM_EXIT_LOAD_IA32_PAT", "Load IA32_PAT"),
    (EXIT, 20, "VM_EXIT_SAVE_IA32_EFER", "Save IA32_EFER"),
    (EXIT, 21, "VM_EXIT_LOAD_IA32_EFER", "Load IA32_EFER"),
    (EXIT, 22, "VM_EXIT_SAVE_VMX_PREEMPTION_TIMER", "Save VMX-preemption timer value"),
    (EXIT, 23, "VM_EXIT_CLEAR_BNDCFGS", "Clear IA32_BNDCFGS"),
    (EXIT, 24, "VM_EXIT_PT_CONCEAL_PIP", "Conceal VMX from PT"),
    (EXIT, 25, "VM_EXIT_CLEAR_IA32_RTIT_CTL", "Clear IA32_RTIT_CTL"),
    (EXIT, 28, "VM_EXIT_LOAD_CET_STATE", "Load CET state"),
    (EXIT, 31, "VM_EXIT_ACTIVATE_SECONDARY_CONTROLS", "Activate secondary controls"),
    (ENTRY, 2, "VM_ENTRY_LOAD_DEBUG_CONTROLS", "Load debug controls"),
    (ENTRY, 9, "VM_ENTRY_IA32E_MODE", "IA-32e mode guest"),
    (ENTRY, 10, "VM_ENTRY_SMM", "Entry to SMM"),
    (ENTRY, 11, "VM_ENTRY_DEACT_DUAL_MONITOR", "Deactivate dual-monitor treatment"),
    (ENTRY, 13, "VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL", "Load IA32_PERF_GLOBAL_CTRL"),
    (ENTRY, 14, "VM_ENTRY_LOAD_IA32_PAT", "Load IA32_PAT"),
    (ENTRY, 15, "VM_ENTRY_LOAD_IA32_EFER", "Load IA32_EFER"),
    (ENTRY, 16, "VM_ENTRY_LOAD_BNDCFGS", "Load IA32_BNDCFGS"),
    (ENTRY, 17, "VM_ENTRY_PT_CONCEAL_PIP", "Conceal VMX from PT"),
    (ENTRY, 18, "VM_ENTRY_LOAD_IA32_RTIT_CTL", "Load IA32_RTIT_CTL"),
    (ENTRY, 20, "VM_ENTRY_LOAD_CET_STATE", "Load CET state"),
    (VMFUNC, 0, "VMX_VMFUNC_EPTP_SWITCHING", "EPTP switching"),
]
CONTROL_BIT: dict[str, tuple[str, int]] = {name: (field, bit) for field, bit, name, _ in CONTROLS}
globals().update({name: 1 << bit for _, bit, name, _ in CONTROLS})  # CPU_BASED_HLT_EXITING = 1 << 7, ...

# Bits reserved to 1 ("default1", SDM A.2-A.5); the TRUE MSRs say which of them may be 0.
PIN_DEFAULT1 = 0x0000_0016  # bits 1, 2, 4
PROC_DEFAULT1 = 0x0401_E172  # bits 1, 4-6, 8, 13-16, 26
EXIT_DEFAULT1 = 0x0003_6DFF  # bits 0-8, 10, 11, 13, 14, 16, 17
ENTRY_DEFAULT1 = 0x0000_11FF  # bits 0-8, 12


def _bit(name: str) -> int:
    return 1 << CONTROL_BIT[name][1]


def _bits(*names: str) -> int:
    value = 0
    for name in names:
        value |= _bit(name)
    return value


# What hvsim models: the controls whose 1-setting it allows. Named in the SDM but left out:
# tertiary controls, VM functions, VMCS shadowing, #VE, SGX, PT, TSC scaling, SPP, CET,
# MPX, SMM and dual-monitor treatment, and IA32_PERF_GLOBAL_CTRL (hvsim's CPUID has no PMU).
HVSIM_PIN = _bits("PIN_BASED_EXT_INTR_MASK", "PIN_BASED_NMI_EXITING", "PIN_BASED_VIRTUAL_NMIS",
                  "PIN_BASED_VMX_PREEMPTION_TIMER", "PIN_BASED_POSTED_INTR")
HVSIM_PROC = _bits(*(n for f, _, n, _ in CONTROLS if f == PROC and n != "CPU_BASED_ACTIVATE_TERTIARY_CONTROLS"))
HVSIM_PROC2 = _bits(
    "SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES", "SECONDARY_EXEC_ENABLE_EPT", "SECONDARY_EXEC_DESC",
    "SECONDARY_EXEC_ENABLE_RDTSCP", "SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE", "SECONDARY_EXEC_ENABLE_VPID",
    "SECONDARY_EXEC_WBINVD_EXITING", "SECONDARY_EXEC_UNRESTRICTED_GUEST", "SECONDARY_EXEC_APIC_REGISTER_VIRT",
    "SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY", "SECONDARY_EXEC_PAUSE_LOOP_EXITING",
    "SECONDARY_EXEC_RDRAND_EXITING", "SECONDARY_EXEC_ENABLE_INVPCID", "SECONDARY_EXEC_RDSEED_EXITING",
    "SECONDARY_EXEC_ENABLE_XSAVES", "SECONDARY_EXEC_ENABLE_PML")
HVSIM_EXIT = _bits("VM_EXIT_SAVE_DEBUG_CONTROLS", "VM_EXIT_HOST_ADDR_SPACE_SIZE", "VM_EXIT_ACK_INTR_ON_EXIT",
                   "VM_EXIT_SAVE_IA32_PAT", "VM_EXIT_LOAD_IA32_PAT", "VM_EXIT_SAVE_IA32_EFER",
                   "VM_EXIT_LOAD_IA32_EFER", "VM_EXIT_SAVE_VMX_PREEMPTION_TIMER")
HVSIM_ENTRY = _bits("VM_ENTRY_LOAD_DEBUG_CONTROLS", "VM_ENTRY_IA32E_MODE", "VM_ENTRY_LOAD_IA32_PAT",
                    "VM_ENTRY_LOAD_IA32_EFER")

# Default1 bits hvsim lets software clear through the TRUE MSRs (as current processors do):
# CR3-load/store exiting, save debug controls, load debug controls.
TRUE_CLEARABLE = {PIN: 0, PROC: _bits("CPU_BASED_CR3_LOAD_EXITING", "CPU_BASED_CR3_STORE_EXITING"),
                  EXIT: _bits("VM_EXIT_SAVE_DEBUG_CONTROLS"), ENTRY: _bits("VM_ENTRY_LOAD_DEBUG_CONTROLS")}

# -- IA32_VMX_BASIC (SDM A.1) ---------------------------------------------------------------------
REVISION_ID = 0x4856_534D  # "HVSM"; bits 30:0 only
VMX_BASIC_VMCS_SIZE_SHIFT = 32  # bits 44:32
VMX_BASIC_32BIT_ADDRESSES = 1 << 48
VMX_BASIC_DUAL_MONITOR = 1 << 49
VMX_BASIC_MEM_TYPE_SHIFT = 50  # bits 53:50
MEM_TYPE_UC, MEM_TYPE_WB = 0, 6
VMX_BASIC_INOUT = 1 << 54  # INS/OUTS exits report VM-exit instruction information
VMX_BASIC_TRUE_CTLS = 1 << 55
VMX_BASIC_NO_HW_ERRCODE_CC = 1 << 56  # entry may deliver hardware exceptions with or without error code

# -- IA32_VMX_MISC (SDM A.6) ----------------------------------------------------------------------
VMX_MISC_PREEMPTION_TIMER_RATE_MASK = 0x1F
VMX_MISC_SAVE_EFER_LMA = 1 << 5
VMX_MISC_ACTIVITY_HLT = 1 << 6
VMX_MISC_ACTIVITY_SHUTDOWN = 1 << 7
VMX_MISC_ACTIVITY_WAIT_SIPI = 1 << 8
VMX_MISC_CR3_COUNT_SHIFT = 16  # bits 24:16
VMX_MISC_MAX_MSR_SHIFT = 25  # bits 27:25: lists of up to 512 * (N + 1) MSRs
VMX_MISC_VMWRITE_ANY_FIELD = 1 << 29
VMX_MISC_ZERO_LEN_INS = 1 << 30
PREEMPTION_TIMER_RATE = 5  # the timer counts down when bit 5 of the TSC changes
CR3_TARGET_COUNT_MAX = 4

# -- IA32_VMX_EPT_VPID_CAP (SDM A.10) -------------------------------------------------------------
VMX_EPT_EXECUTE_ONLY_BIT = 1 << 0
VMX_EPT_PAGE_WALK_4_BIT = 1 << 6
VMX_EPT_PAGE_WALK_5_BIT = 1 << 7
VMX_EPTP_UC_BIT = 1 << 8
VMX_EPTP_WB_BIT = 1 << 14
VMX_EPT_2MB_PAGE_BIT = 1 << 16
VMX_EPT_1GB_PAGE_BIT = 1 << 17
VMX_EPT_INVEPT_BIT = 1 << 20
VMX_EPT_AD_BIT = 1 << 21
VMX_EPT_EXTENT_CONTEXT_BIT = 1 << 25  # INVEPT type 1; type t is bit 24 + t
VMX_EPT_EXTENT_GLOBAL_BIT = 1 << 26  # INVEPT type 2
VMX_VPID_INVVPID_BIT = 1 << 32
VMX_VPID_EXTENT_INDIVIDUAL_ADDR_BIT = 1 << 40  # INVVPID type t is bit 40 + t
VMX_VPID_EXTENT_SINGLE_CONTEXT_BIT = 1 << 41
VMX_VPID_EXTENT_GLOBAL_CONTEXT_BIT = 1 << 42
VMX_VPID_EXTENT_SINGLE_NON_GLOBAL_BIT = 1 << 43
HVSIM_EPT_VPID_CAP = (VMX_EPT_EXECUTE_ONLY_BIT | VMX_EPT_PAGE_WALK_4_BIT | VMX_EPT_PAGE_WALK_5_BIT
                      | VMX_EPT_AD_BIT | VMX_EPTP_UC_BIT | VMX_EPTP_WB_BIT
                      | VMX_EPT_2MB_PAGE_BIT | VMX_EPT_1GB_PAGE_BIT | VMX_EPT_INVEPT_BIT
                      | VMX_EPT_EXTENT_CONTEXT_BIT | VMX_EPT_EXTENT_GLOBAL_BIT | VMX_VPID_INVVPID_BIT
                      | VMX_VPID_EXTENT_INDIVIDUAL_ADDR_BIT | VMX_VPID_EXTENT_SINGLE_CONTEXT_BIT
                      | VMX_VPID_EXTENT_GLOBAL_CONTEXT_BIT | VMX_VPID_EXTENT_SINGLE_NON_GLOBAL_BIT)

# -- fixed CR0/CR4 bits (SDM A.7, A.8) ------------------------------------------------------------
X86_CR0_PE, X86_CR0_NE, X86_CR0_PG = 1 << 0, 1 << 5, 1 << 31
X86_CR4_VMXE = 1 << 13
CR0_FIXED0 = X86_CR0_PG | X86_CR0_NE | X86_CR0_PE  # 0x80000021
CR0_FIXED1 = 0xFFFF_FFFF
CR4_FIXED0 = X86_CR4_VMXE
# The CR4 bits hvsim's CPUID (plugins/x86/cpuid.py) backs: TSD, PSE, PAE, PGE, PCE, OSFXSR,
# OSXMMEXCPT, LA57, OSXSAVE, SMEP, SMAP, plus VMXE.
CR4_FIXED1 = ((1 << 2) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 12)
              | X86_CR4_VMXE | (1 << 18) | (1 << 20) | (1 << 21))

MAXPHYADDR = 40  # CPUID.80000008H:EAX[7:0] in plugins/x86/cpuid.py


class VmxCapabilities:
    """The capability MSRs of one processor model, computed from the controls it allows.

    ``VmxCapabilities()`` is hvsim's processor; keyword arguments change one choice, e.g.
    ``VmxCapabilities(vmwrite_any_field=False)`` for a processor without IA32_VMX_MISC bit 29.
    """

    def __init__(self, *, pin: int = HVSIM_PIN, proc: int = HVSIM_PROC, proc2: int = HVSIM_PROC2,
                 exit: int = HVSIM_EXIT, entry: int = HVSIM_ENTRY, vmfunc: int = 0,
                 ept_vpid_cap: int = HVSIM_EPT_VPID_CAP, vmwrite_any_field: bool = True,
                 revision_id: int = REVISION_ID, maxphyaddr: int = MAXPHYADDR) -> None:
        self.revision_id = revision_id & 0x7FFF_FFFF
        self.maxphyaddr = maxphyaddr
        if not proc & _bit("CPU_BASED_ACTIVATE_SECONDARY_CONTROLS"):
            proc2 = 0
        if not proc2 & _bit("SECONDARY_EXEC_ENABLE_VMFUNC"):
            vmfunc = 0
        if not proc2 & (_bit("SECONDARY_EXEC_ENABLE_EPT") | _bit("SECONDARY_EXEC_ENABLE_VPID")):
            ept_vpid_cap = 0
        self.allowed1 = {PIN: pin | PIN_DEFAULT1, PROC: proc | PROC_DEFAULT1, PROC2: proc2,
                         EXIT: exit | EXIT_DEFAULT1, ENTRY: entry | ENTRY_DEFAULT1, PROC3: 0, VMFUNC: vmfunc}
        default1 = {PIN: PIN_DEFAULT1, PROC: PROC_DEFAULT1, EXIT: EXIT_DEFAULT1, ENTRY: ENTRY_DEFAULT1}
        self.allowed0 = {f: d & ~TRUE_CLEARABLE[f] for f, d in default1.items()} | {PROC2: 0, PROC3: 0}
        self.supported_fields = frozenset(
            int(f) for f in Field if f not in REQUIRES or any(self.allows(n) for n in REQUIRES[f]))
        ctls = lambda low, high: (high << 32) | low
        misc = (PREEMPTION_TIMER_RATE | VMX_MISC_ACTIVITY_HLT | VMX_MISC_ACTIVITY_SHUTDOWN
                | VMX_MISC_ACTIVITY_WAIT_SIPI | (CR3_TARGET_COUNT_MAX << VMX_MISC_CR3_COUNT_SHIFT)
                | (VMX_MISC_VMWRITE_ANY_FIELD if vmwrite_any_field else 0))
        if proc2 & _bit("SECONDARY_EXEC_UNRESTRICTED_GUEST"):  # A.6: set with unrestricted guest
            misc |= VMX_MISC_SAVE_EFER_LMA
        self.msrs: dict[int, int] = {
            IA32_VMX_BASIC: (self.revision_id | (0x1000 << VMX_BASIC_VMCS_SIZE_SHIFT)
                             | (MEM_TYPE_WB << VMX_BASIC_MEM_TYPE_SHIFT) | VMX_BASIC_INOUT | VMX_BASIC_TRUE_CTLS),
            IA32_VMX_PINBASED_CTLS: ctls(PIN_DEFAULT1, self.allowed1[PIN]),
            IA32_VMX_PROCBASED_CTLS: ctls(PROC_DEFAULT1, self.allowed1[PROC]),
            IA32_VMX_EXIT_CTLS: ctls(EXIT_DEFAULT1, self.allowed1[EXIT]),
            IA32_VMX_ENTRY_CTLS: ctls(ENTRY_DEFAULT1, self.allowed1[ENTRY]),
            IA32_VMX_MISC: misc,
            IA32_VMX_CR0_FIXED0: CR0_FIXED0, IA32_VMX_CR0_FIXED1: CR0_FIXED1,
            IA32_VMX_CR4_FIXED0: CR4_FIXED0, IA32_VMX_CR4_FIXED1: CR4_FIXED1,
            IA32_VMX_VMCS_ENUM: max(Encoding.of(e).index for e in self.supported_fields) << 1,
            IA32_VMX_TRUE_PINBASED_CTLS: ctls(self.allowed0[PIN], self.allowed1[PIN]),
            IA32_VMX_TRUE_PROCBASED_CTLS: ctls(self.allowed0[PROC], self.allowed1[PROC]),
            IA32_VMX_TRUE_EXIT_CTLS: ctls(self.allowed0[EXIT], self.allowed1[EXIT]),
            IA32_VMX_TRUE_ENTRY_CTLS: ctls(self.allowed0[ENTRY], self.allowed1[ENTRY]),
        }
        # These exist only where the controls they describe can be 1 (SDM A.3.3, A.10, A.11).
        if proc2:
            self.msrs[IA32_VMX_PROCBASED_CTLS2] = ctls(0, self.allowed1[PROC2])
        if ept_vpid_cap:
            self.msrs[IA32_VMX_EPT_VPID_CAP] = ept_vpid_cap
        if proc2 & _bit("SECONDARY_EXEC_ENABLE_VMFUNC"):
            self.msrs[IA32_VMX_VMFUNC] = vmfunc
        assert VmcsRegion.SIZE <= 0x1000

    @property
    def misc(self) -> int:
        return self.msrs[IA32_VMX_MISC]

    @property
    def ept_vpid_cap(self) -> int:
        return self.msrs.get(IA32_VMX_EPT_VPID_CAP, 0)

    @property
    def vmwrite_any_field(self) -> bool:
        return bool(self.misc & VMX_MISC_VMWRITE_ANY_FIELD)

    def allows(self, control: str) -> bool:
        """May the named control be 1? Names hvsim does not define are features it does not model."""
        where = CONTROL_BIT.get(control)
        return where is not None and bool(self.allowed1.get(where[0], 0) >> where[1] & 1)

    def rdmsr(self, index: int) -> int:
        """RDMSR of a VMX capability MSR; KeyError where the MSR does not exist (#GP on hardware)."""
        return self.msrs[index]


MSR_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("IA32_VMX_")}

_CTLS_FIELD = {IA32_VMX_PINBASED_CTLS: PIN, IA32_VMX_TRUE_PINBASED_CTLS: PIN, IA32_VMX_PROCBASED_CTLS: PROC,
               IA32_VMX_TRUE_PROCBASED_CTLS: PROC, IA32_VMX_PROCBASED_CTLS2: PROC2, IA32_VMX_EXIT_CTLS: EXIT,
               IA32_VMX_TRUE_EXIT_CTLS: EXIT, IA32_VMX_ENTRY_CTLS: ENTRY, IA32_VMX_TRUE_ENTRY_CTLS: ENTRY}
_EPT_VPID_NAMES = {0: "execute-only", 6: "4-level walk", 7: "5-level walk", 8: "UC EPTP", 14: "WB EPTP",
                   16: "2 MiB pages", 17: "1 GiB pages", 20: "INVEPT", 21: "accessed/dirty flags",
                   22: "advanced EPT-violation information", 25: "INVEPT single-context",
                   26: "INVEPT all-context", 32: "INVVPID", 40: "INVVPID individual-address",
                   41: "INVVPID single-context", 42: "INVVPID all-context",
                   43: "INVVPID single-context-retaining-globals"}


def describe(index: int, value: int) -> str:
    """One line saying what a capability MSR's value means (SDM Appendix A)."""
    if index == IA32_VMX_BASIC:
        return (f"revision id {value & 0x7FFF_FFFF:#x}; VMCS region {(value >> 32) & 0x1FFF} bytes; "
                f"memory type {(value >> 50) & 0xF} (6 = WB); "
                f"INS/OUTS instruction information {value >> 54 & 1}; TRUE controls MSRs {value >> 55 & 1}")
    if index in _CTLS_FIELD:
        field = _CTLS_FIELD[index]
        may = [n for f, b, n, _ in CONTROLS if f == field and value >> (32 + b) & 1]
        return (f"allowed-0 (bits that must be 1) {value & 0xFFFF_FFFF:#010x}; allowed-1 {value >> 32:#010x}: "
                + ", ".join(may))
    if index == IA32_VMX_MISC:
        states = [s for bit, s in ((6, "HLT"), (7, "shutdown"), (8, "wait-for-SIPI")) if value >> bit & 1]
        return (f"preemption timer rate {value & 0x1F}; stores EFER.LMA {value >> 5 & 1}; activity states "
                f"{', '.join(states)}; CR3-target values {(value >> 16) & 0x1FF}; MSR lists up to "
                f"{512 * (((value >> 25) & 7) + 1)}; VMWRITE to any supported field {value >> 29 & 1}; "
                f"zero-length instruction injection {value >> 30 & 1}; MSEG revision {value >> 32}")
    if index in (IA32_VMX_CR0_FIXED0, IA32_VMX_CR4_FIXED0):
        return f"bits fixed to 1 in VMX operation: {value:#x}"
    if index in (IA32_VMX_CR0_FIXED1, IA32_VMX_CR4_FIXED1):
        return f"bits that may be 1 in VMX operation: {value:#x}"
    if index == IA32_VMX_VMCS_ENUM:
        return f"highest index of any VMCS encoding: {(value >> 1) & 0x1FF:#x}"
    if index == IA32_VMX_EPT_VPID_CAP:
        return ", ".join(name for bit, name in _EPT_VPID_NAMES.items() if value >> bit & 1)
    if index == IA32_VMX_VMFUNC:
        return f"VM functions allowed: {value:#x} (bit 0 EPTP switching)"
    return ""
