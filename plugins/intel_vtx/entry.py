"""The checks VMLAUNCH and VMRESUME make before they enter the guest (Intel SDM Vol. 3C 26.2,
26.3.1, 26.4).

One function per SDM subsection, in the SDM's order. Each rule is an ``if`` whose failure calls
``e.fail(check, rule, detail)``: ``check`` is a short name (the tests are named after it),
``rule`` the SDM's words, ``detail`` the values that broke it. The first failure ends the checks
(Bochs' ``VMenterLoadCheck*`` in cpu/vmx.cc stop the same way, logging one reason each), and
:func:`check_vmx_controls_and_host_state` / :func:`check_guest_state` return it:

* 26.2.1 (VM-execution, VM-exit, VM-entry controls): VMfailValid, VM-instruction error 7;
* 26.2.2-26.2.4 (host state): VMfailValid, error 8;
* 26.3.1 (guest state): a VM exit with basic reason 33 and bit 31 set, the exit qualification
  saying which kind of failure (SDM 26.8: 0 most checks, 2 PDPTEs, 3 NMI injection blocked by
  STI, 4 VMCS link pointer);
* 26.4 (the VM-entry MSR-load area): basic reason 34, the qualification naming the entry.

A check named in :data:`NOT_ENFORCED` is still evaluated, but its failure is only recorded
(``Entry.waived``) and the checks go on: the place for a rule hvsim's own run loop is known to
break until the run loop is fixed. It is empty when hvsim follows the SDM everywhere.
"""

from __future__ import annotations

import struct

from hvsim.core.memory import GuestMemoryError

from . import msrs
from .msrs import VmxCapabilities
from .vmcs import Field, read_u32

# -- outcome numbers ------------------------------------------------------------------------------
VMXERR_ENTRY_INVALID_CONTROL_FIELD = 7
VMXERR_ENTRY_INVALID_HOST_STATE_FIELD = 8
EXIT_REASON_INVALID_STATE = 33  # "VM-entry failure due to invalid guest state"
EXIT_REASON_MSR_LOAD_FAIL = 34  # "VM-entry failure due to MSR loading"
ENTRY_FAIL_DEFAULT, ENTRY_FAIL_PDPTE, ENTRY_FAIL_NMI_STI, ENTRY_FAIL_VMCS_LINK_PTR = 0, 2, 3, 4  # SDM 26.8

# Checks whose failure is recorded (Vmx.last_entry_waived) but does not stop the entry, each with
# the field and value hvsim's own run loop (vmm.py save_guest_state) writes that breaks it. Every
# entry here is a vmm.py bug to fix, after which the line goes: the checks themselves are exact.
NOT_ENFORCED: dict[str, str] = {}

# -- architectural constants ----------------------------------------------------------------------
# CPUID.80000008H:EAX[15:8] in plugins/x86/cpuid.py: the processor supports 5-level paging, so
# the VM-entry canonical checks are relative to 57 bits, whatever the guest's CR4.LA57 (a Linux
# guest with LA57 keeps its GDT at an address such as 0xff40_3c96_4f60_b000)
LINEAR_ADDRESS_WIDTH = 57
ALL_ONES = (1 << 64) - 1
X86_CR0_PE, X86_CR0_WP, X86_CR0_PG = 1 << 0, 1 << 16, 1 << 31
X86_CR4_PAE, X86_CR4_PCIDE = 1 << 5, 1 << 17
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
EFER_RESERVED = ALL_ONES & ~(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE)  # the bits Intel defines
X86_EFLAGS_TF, X86_EFLAGS_IF, X86_EFLAGS_VM = 1 << 8, 1 << 9, 1 << 17
RFLAGS_RESERVED_0 = (ALL_ONES << 22 & ALL_ONES) | 1 << 15 | 1 << 5 | 1 << 3  # bit 1 is reserved to 1
DEBUGCTL_BTF = 1 << 1
DEBUGCTL_RESERVED = (ALL_ONES << 16 & ALL_ONES) | 0x3C  # bits 63:16 and 5:2
PAT_MEMORY_TYPES = {0, 1, 4, 5, 6, 7}  # UC WC WT WP WB UC-; 2 and 3 are reserved

# VM-entry interruption-information field (SDM 24.8.3, Table 24-14)
INTR_INFO_VECTOR_MASK = 0xFF
INTR_INFO_DELIVER_CODE = 1 << 11
INTR_INFO_RESERVED = 0x7FFF_F000  # bits 30:12
INTR_INFO_VALID = 1 << 31
INTR_TYPE_EXT_INTR, INTR_TYPE_RESERVED, INTR_TYPE_NMI, INTR_TYPE_HARD_EXCEPTION = 0, 1, 2, 3
INTR_TYPE_SOFT_INTR, INTR_TYPE_PRIV_SW_EXCEPTION, INTR_TYPE_SOFT_EXCEPTION, INTR_TYPE_OTHER_EVENT = 4, 5, 6, 7
EXCEPTIONS_WITH_ERROR_CODE = {8, 10, 11, 12, 13, 14, 17}  # #DF #TS #NP #SS #GP #PF #AC
DB_VECTOR, NMI_VECTOR, MC_VECTOR = 1, 2, 18

# Guest non-register state (SDM 24.4.2)
GUEST_ACTIVITY_ACTIVE, GUEST_ACTIVITY_HLT, GUEST_ACTIVITY_SHUTDOWN, GUEST_ACTIVITY_WAIT_SIPI = 0, 1, 2, 3
ACTIVITY_STATE_NAMES = {0: "active", 1: "HLT", 2: "shutdown", 3: "wait-for-SIPI"}
ACTIVITY_STATE_MISC_BIT = {GUEST_ACTIVITY_HLT: msrs.VMX_MISC_ACTIVITY_HLT,
                           GUEST_ACTIVITY_SHUTDOWN: msrs.VMX_MISC_ACTIVITY_SHUTDOWN,
                           GUEST_ACTIVITY_WAIT_SIPI: msrs.VMX_MISC_ACTIVITY_WAIT_SIPI}
GUEST_INTR_STATE_STI, GUEST_INTR_STATE_MOV_SS, GUEST_INTR_STATE_SMI, GUEST_INTR_STATE_NMI = 1, 2, 4, 8
GUEST_INTR_STATE_ENCLAVE_INTR = 1 << 4
GUEST_INTR_STATE_RESERVED = 0xFFFF_FFE0  # bits 31:5
PENDING_DBG_B0_3, PENDING_DBG_ENABLED_BP, PENDING_DBG_BS, PENDING_DBG_RTM = 0xF, 1 << 12, 1 << 14, 1 << 16
PENDING_DBG_RESERVED = ALL_ONES & ~(PENDING_DBG_B0_3 | PENDING_DBG_ENABLED_BP | PENDING_DBG_BS | PENDING_DBG_RTM)

# Segment access rights in the VMCS format (SDM 24.4.1, Table 24-2)
AR_TYPE_MASK, AR_S, AR_DPL_SHIFT, AR_P = 0xF, 1 << 4, 5, 1 << 7
AR_RESERVED_11_8, AR_L, AR_DB, AR_G, AR_UNUSABLE = 0xF00, 1 << 13, 1 << 14, 1 << 15, 1 << 16
AR_RESERVED_31_17 = 0xFFFE_0000
AR_V8086 = 0xF3  # present, DPL 3, read/write accessed data
TYPE_ACCESSED, TYPE_READABLE, TYPE_CODE = 1, 2, 8
TSS_BUSY_16, LDT_TYPE, TSS_BUSY_32 = 3, 2, 11
DATA_SEGMENTS = ("ES", "SS", "DS", "FS", "GS")

# VM-entry MSR-load area (SDM 24.8.2, 26.4)
MSR_FS_BASE, MSR_GS_BASE, MSR_IA32_SMM_MONITOR_CTL = 0xC000_0100, 0xC000_0101, 0x9E


class EntryCheckFailed(Exception):
    """One VM-entry check failed: which one, the SDM's words, and the values that broke it."""

    def __init__(self, check: str, section: str, rule: str, detail: str, qualification: int = 0) -> None:
        super().__init__(check)
        self.check, self.section, self.rule, self.detail = check, section, rule, detail
        self.qualification = qualification

    def __str__(self) -> str:
        return f"SDM {self.section} [{self.check}]: {self.rule}" + (f" ({self.detail})" if self.detail else "")


# Field encodings by register name, looked up once: the checks run at every VM entry.
GUEST_SEGMENT_FIELDS = {name: tuple(int(getattr(Field, f"GUEST_{name}_{part}"))
                                    for part in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES"))
                        for name in ("ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR")}
GUEST_TABLE_FIELDS = {name: (int(getattr(Field, f"GUEST_{name}_BASE")), int(getattr(Field, f"GUEST_{name}_LIMIT")))
                      for name in ("GDTR", "IDTR")}
HOST_SELECTOR_FIELDS = {name: int(getattr(Field, f"HOST_{name}_SELECTOR"))
                        for name in ("ES", "CS", "SS", "DS", "FS", "GS", "TR")}
HOST_BASE_FIELDS = {name: int(getattr(Field, f"HOST_{name}_BASE")) for name in ("FS", "GS", "GDTR", "IDTR", "TR")}


def canonical(address: int, width: int = LINEAR_ADDRESS_WIDTH) -> bool:
    """Bits 63:width-1 all equal (SDM 3.3.7.1)."""
    top = address >> (width - 1)
    return top == 0 or top == (1 << (64 - width + 1)) - 1


class Entry:
    """What the checks read: the VMCS's field values, the capability MSRs, physical memory,
    and the processor's own state (IA32_EFER.LMA for 26.2.4). Control fields are read once."""

    def __init__(self, cpu, vmcs) -> None:
        self.values, self.caps, self.memory = vmcs.values, cpu.caps, cpu.memory
        self.cpu, self.vmcs = cpu, vmcs
        self.section = ""
        self.waived: list[str] = []
        self.pin = self.get(Field.PIN_BASED_VM_EXEC_CONTROL)
        self.proc = self.get(Field.CPU_BASED_VM_EXEC_CONTROL)
        # "If the 'activate secondary controls' primary processor-based VM-execution control is
        # 0 ... the processor operates as if all the secondary controls were 0" (SDM 25.6.2).
        activated = self.proc & msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
        self.proc2 = self.get(Field.SECONDARY_VM_EXEC_CONTROL) if activated else 0
        self.exit = self.get(Field.VM_EXIT_CONTROLS)
        self.entry = self.get(Field.VM_ENTRY_CONTROLS)
        self.ia32e_guest = bool(self.entry & msrs.VM_ENTRY_IA32E_MODE)
        self.host_64 = bool(self.exit & msrs.VM_EXIT_HOST_ADDR_SPACE_SIZE)
        self.unrestricted = bool(self.proc2 & msrs.SECONDARY_EXEC_UNRESTRICTED_GUEST)
        self.intr_info = self.get(Field.VM_ENTRY_INTR_INFO_FIELD)
        self.injecting = bool(self.intr_info & INTR_INFO_VALID)
        self.intr_type = (self.intr_info >> 8) & 7
        self.vector = self.intr_info & INTR_INFO_VECTOR_MASK

    def get(self, field: int) -> int:
        """A field's value; 0 for a field this processor does not support."""
        return self.values.get(field, 0)

    def injects(self, intr_type: int) -> bool:
        return self.injecting and self.intr_type == intr_type

    def segment(self, name: str) -> tuple[int, int, int, int]:
        """(selector, base, limit, access rights) of a guest segment register."""
        v = self.values
        selector, base, limit, ar = GUEST_SEGMENT_FIELDS[name]
        return v[selector], v[base], v[limit], v[ar]

    def bad_address(self, address: int, alignment: int = 0x1000) -> bool:
        """Not aligned, or beyond the physical-address width (CPUID.80000008H:EAX[7:0])."""
        return bool(address & (alignment - 1) or address >> self.caps.maxphyaddr)

    def fail(self, check: str, rule: str, detail: str = "", qualification: int = 0) -> None:
        failure = EntryCheckFailed(check, self.section, rule, detail, qualification)
        if check in NOT_ENFORCED:
            self.waived.append(f"{failure} -- not enforced: {NOT_ENFORCED[check]}")
            return
        raise failure


# =================================================================================================
# 26.2.1 Checks on VMX controls: VM-instruction error 7
# =================================================================================================
def _control_msr(caps: VmxCapabilities, plain: int, true: int | None) -> tuple[int, int]:
    """(bits that must be 1, bits that may be 1) of a control field: the TRUE MSR when
    IA32_VMX_BASIC[55] is 1 (SDM A.2)."""
    use_true = true is not None and caps.msrs[msrs.IA32_VMX_BASIC] & msrs.VMX_BASIC_TRUE_CTLS
    value = caps.msrs[true if use_true else plain]
    return value & 0xFFFF_FFFF, value >> 32


def _check_reserved_bits(e: Entry, check: str, name: str, value: int, plain: int, true: int | None) -> None:
    must, may = _control_msr(e.caps, plain, true)
    if value & must != must:
        e.fail(check, f"Reserved bits in the {name} must be set properly: bits the capability MSR "
               f"reports as allowed-0 = 1 must be 1", f"{name} {value:#010x}, missing {must & ~value:#010x}")
    if value & ~may:
        e.fail(check, f"Reserved bits in the {name} must be set properly: bits the capability MSR "
               f"reports as allowed-1 = 0 must be 0", f"{name} {value:#010x}, not allowed {value & ~may:#010x}")


def check_vm_execution_controls(e: Entry) -> None:
    """SDM 26.2.1.1 "VM-Execution Control Fields"."""
    pin, proc, proc2, v = e.pin, e.proc, e.proc2, e.values
    _check_reserved_bits(e, "pin_based_controls_reserved_bits", "pin-based VM-execution controls", pin,
                         msrs.IA32_VMX_PINBASED_CTLS, msrs.IA32_VMX_TRUE_PINBASED_CTLS)
    _check_reserved_bits(e, "primary_processor_based_controls_reserved_bits",
                         "primary processor-based VM-execution controls", proc,
                         msrs.IA32_VMX_PROCBASED_CTLS, msrs.IA32_VMX_TRUE_PROCBASED_CTLS)
    if proc & msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS:
        _check_reserved_bits(e, "secondary_processor_based_controls_reserved_bits",
                             "secondary processor-based VM-execution controls",
                             e.get(Field.SECONDARY_VM_EXEC_CONTROL), msrs.IA32_VMX_PROCBASED_CTLS2, None)

    count, most = e.get(Field.CR3_TARGET_COUNT), (e.caps.misc >> msrs.VMX_MISC_CR3_COUNT_SHIFT) & 0x1FF
    if count > most:
        e.fail("cr3_target_count", f"The CR3-target count must not be greater than {most} "
               "(IA32_VMX_MISC bits 24:16)", f"count {count}")

    if proc & msrs.CPU_BASED_USE_IO_BITMAPS:
        for field, name in ((Field.IO_BITMAP_A, "A"), (Field.IO_BITMAP_B, "B")):
            if e.bad_address(v[field]):
                e.fail("io_bitmap_address", f"If the 'use I/O bitmaps' VM-execution control is 1, bits 11:0 of "
                       f"the address of I/O bitmap {name} must be 0 and it must not set any bits beyond the "
                       "processor's physical-address width", f"address {v[field]:#x}")
    if proc & msrs.CPU_BASED_USE_MSR_BITMAPS and e.bad_address(v[Field.MSR_BITMAP]):
        e.fail("msr_bitmap_address", "If the 'use MSR bitmaps' VM-execution control is 1, bits 11:0 of the "
               "MSR-bitmap address must be 0 and it must not set any bits beyond the processor's "
               "physical-address width", f"address {v[Field.MSR_BITMAP]:#x}")

    _check_tpr_shadow(e)

    if not pin & msrs.PIN_BASED_NMI_EXITING and pin & msrs.PIN_BASED_VIRTUAL_NMIS:
        e.fail("virtual_nmis_without_nmi_exiting",
               "If the 'NMI exiting' VM-execution control is 0, the 'virtual NMIs' VM-execution control must be 0")
    if not pin & msrs.PIN_BASED_VIRTUAL_NMIS and proc & msrs.CPU_BASED_NMI_WINDOW_EXITING:
        e.fail("nmi_window_exiting_without_virtual_nmis", "If the 'virtual NMIs' VM-execution control is 0, "
               "the 'NMI-window exiting' VM-execution control must be 0")

    if proc2 & msrs.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES and e.bad_address(e.get(Field.APIC_ACCESS_ADDR)):
        e.fail("apic_access_address", "If the 'virtualize APIC-accesses' VM-execution control is 1, bits 11:0 "
               "of the APIC-access address must be 0 and it must not set any bits beyond the processor's "
               "physical-address width", f"address {e.get(Field.APIC_ACCESS_ADDR):#x}")
    if proc2 & msrs.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE and proc2 & msrs.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES:
        e.fail("x2apic_mode_with_apic_accesses", "If the 'virtualize x2APIC mode' VM-execution control is 1, "
               "the 'virtualize APIC accesses' VM-execution control must be 0")
    if proc2 & msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY and not pin & msrs.PIN_BASED_EXT_INTR_MASK:
        e.fail("virtual_interrupt_delivery_without_external_interrupt_exiting",
               "If the 'virtual-interrupt delivery' VM-execution control is 1, the 'external-interrupt "
               "exiting' VM-execution control must be 1")
    if pin & msrs.PIN_BASED_POSTED_INTR:
        _check_posted_interrupts(e)

    if proc2 & msrs.SECONDARY_EXEC_ENABLE_VPID and e.get(Field.VIRTUAL_PROCESSOR_ID) == 0:
        e.fail("vpid_zero", "If the 'enable VPID' VM-execution control is 1, the value of the VPID "
               "VM-execution control field must not be 0000H")
    if proc2 & msrs.SECONDARY_EXEC_ENABLE_EPT:
        problem = eptp_problem(e.get(Field.EPT_POINTER), e.caps)
        if problem:
            e.fail("eptp", "If the 'enable EPT' VM-execution control is 1, the EPTP VM-execution control "
                   "field must satisfy the checks of SDM 26.2.1.1: " + problem,
                   f"EPTP {e.get(Field.EPT_POINTER):#x}")
    if proc2 & msrs.SECONDARY_EXEC_ENABLE_PML:
        if not proc2 & msrs.SECONDARY_EXEC_ENABLE_EPT:
            e.fail("pml_without_ept", "If the 'enable PML' VM-execution control is 1, the 'enable EPT' "
                   "VM-execution control must also be 1")
        if e.bad_address(e.get(Field.PML_ADDRESS)):
            e.fail("pml_address", "If the 'enable PML' VM-execution control is 1, bits 11:0 of the PML "
                   "address must be 0 and it must not set any bits beyond the physical-address width",
                   f"address {e.get(Field.PML_ADDRESS):#x}")
    if proc2 & msrs.SECONDARY_EXEC_UNRESTRICTED_GUEST and not proc2 & msrs.SECONDARY_EXEC_ENABLE_EPT:
        e.fail("unrestricted_guest_without_ept", "If the 'unrestricted guest' VM-execution control is 1, "
               "the 'enable EPT' VM-execution control must also be 1")
    if proc2 & msrs.SECONDARY_EXEC_SHADOW_VMCS:
        for field, name in ((Field.VMREAD_BITMAP, "VMREAD"), (Field.VMWRITE_BITMAP, "VMWRITE")):
            if e.bad_address(e.get(field)):
                e.fail("vmcs_shadowing_bitmap_address", f"If the 'VMCS shadowing' VM-execution control is 1, "
                       f"the {name}-bitmap address must have bits 11:0 clear and no bits set beyond the "
                       "physical-address width", f"address {e.get(field):#x}")


def _check_tpr_shadow(e: Entry) -> None:
    """The 'use TPR shadow' rules of SDM 26.2.1.1."""
    proc2, threshold = e.proc2, e.get(Field.TPR_THRESHOLD)
    if not e.proc & msrs.CPU_BASED_TPR_SHADOW:
        for control, name in ((msrs.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE, "virtualize x2APIC mode"),
                              (msrs.SECONDARY_EXEC_APIC_REGISTER_VIRT, "APIC-register virtualization"),
                              (msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY, "virtual-interrupt delivery")):
            if proc2 & control:
                e.fail("apic_virtualization_without_tpr_shadow", "If the 'use TPR shadow' VM-execution "
                       f"control is 0, the '{name}' VM-execution control must be 0")
        return
    apic_page = e.get(Field.VIRTUAL_APIC_PAGE_ADDR)
    if e.bad_address(apic_page):
        e.fail("virtual_apic_address", "If the 'use TPR shadow' VM-execution control is 1, bits 11:0 of the "
               "virtual-APIC address must be 0 and it must not set any bits beyond the processor's "
               "physical-address width", f"address {apic_page:#x}")
    if not proc2 & msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY and threshold & 0xFFFF_FFF0:
        e.fail("tpr_threshold_reserved_bits", "If the 'use TPR shadow' VM-execution control is 1 and the "
               "'virtual-interrupt delivery' VM-execution control is 0, bits 31:4 of the TPR threshold "
               "VM-execution control field must be 0", f"TPR threshold {threshold:#x}")
    if not proc2 & (msrs.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES | msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY):
        vtpr = read_u32(e.memory, apic_page + 0x80) & 0xFF  # VTPR: offset 080H of the virtual-APIC page
        if threshold & 0xF > vtpr >> 4:
            e.fail("tpr_threshold_above_vtpr", "If the 'use TPR shadow' VM-execution control is 1, and the "
                   "'virtualize APIC accesses' and 'virtual-interrupt delivery' VM-execution controls are "
                   "both 0, the value of bits 3:0 of the TPR threshold must not be greater than the value "
                   "of bits 7:4 of VTPR", f"TPR threshold {threshold:#x}, VTPR {vtpr:#x}")


def _check_posted_interrupts(e: Entry) -> None:
    """The 'process posted interrupts' rules of SDM 26.2.1.1."""
    if not e.proc2 & msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY:
        e.fail("posted_interrupts_without_virtual_interrupt_delivery", "If the 'process posted interrupts' "
               "VM-execution control is 1, the 'virtual-interrupt delivery' VM-execution control must be 1")
    if not e.exit & msrs.VM_EXIT_ACK_INTR_ON_EXIT:
        e.fail("posted_interrupts_without_acknowledge_interrupt_on_exit", "If the 'process posted "
               "interrupts' VM-execution control is 1, the 'acknowledge interrupt on exit' VM-exit control "
               "must be 1")
    vector = e.get(Field.POSTED_INTR_NV)
    if vector & 0xFF00:
        e.fail("posted_interrupt_notification_vector", "If the 'process posted interrupts' VM-execution "
               "control is 1, bits 15:8 of the posted-interrupt notification vector must be 0",
               f"vector {vector:#x}")
    address = e.get(Field.POSTED_INTR_DESC_ADDR)
    if e.bad_address(address, 64):
        e.fail("posted_interrupt_descriptor_address", "If the 'process posted interrupts' VM-execution "
               "control is 1, bits 5:0 of the posted-interrupt descriptor address must be 0 and it must "
               "not set any bits beyond the processor's physical-address width", f"address {address:#x}")


def eptp_problem(eptp: int, caps: VmxCapabilities) -> str | None:
    """Why ``eptp`` is not an EPTP this processor supports (SDM 26.2.1.1, IA32_VMX_EPT_VPID_CAP
    per SDM A.10), or None. Says the same as ``vmx.eptp_valid``, with a reason."""
    cap, memory_type, walk = caps.ept_vpid_cap, eptp & 7, ((eptp >> 3) & 7) + 1
    type_bits = {msrs.MEM_TYPE_UC: msrs.VMX_EPTP_UC_BIT, msrs.MEM_TYPE_WB: msrs.VMX_EPTP_WB_BIT}
    walk_bits = {4: msrs.VMX_EPT_PAGE_WALK_4_BIT, 5: msrs.VMX_EPT_PAGE_WALK_5_BIT}
    if not cap & type_bits.get(memory_type, 0):
        return (f"the EPT paging-structure memory type (bits 2:0) must be a value supported by the processor "
                f"(0 = UC if IA32_VMX_EPT_VPID_CAP[8], 6 = WB if [14]); it is {memory_type}")
    if not cap & walk_bits.get(walk, 0):
        return (f"bits 5:3 (1 less than the EPT page-walk length) must indicate a supported page-walk length "
                f"(4 if IA32_VMX_EPT_VPID_CAP[6], 5 if [7]); the length is {walk}")
    if eptp & (1 << 6) and not cap & msrs.VMX_EPT_AD_BIT:
        return "bit 6 (enable accessed and dirty flags) must be 0 if IA32_VMX_EPT_VPID_CAP[21] is 0"
    if eptp & 0xF80:
        return "reserved bits 11:7 must be 0"
    if eptp >> caps.maxphyaddr:
        return "reserved bits 63:N must be 0, N being the processor's physical-address width"
    return None


def _check_msr_area(e: Entry, check: str, count_field: int, address_field: int, name: str) -> None:
    count, address = e.get(count_field), e.get(address_field)
    if count == 0:
        return
    last = address + count * 16 - 1
    if address & 0xF or address >> e.caps.maxphyaddr or last >> e.caps.maxphyaddr:
        e.fail(check, f"If the {name} count is not zero, bits 3:0 of the {name} address must be 0, and the "
               "address (and the address of its last byte) must not set any bits beyond the processor's "
               "physical-address width", f"address {address:#x}, count {count}")


def check_vm_exit_controls(e: Entry) -> None:
    """SDM 26.2.1.2 "VM-Exit Control Fields"."""
    _check_reserved_bits(e, "vm_exit_controls_reserved_bits", "primary VM-exit controls", e.exit,
                         msrs.IA32_VMX_EXIT_CTLS, msrs.IA32_VMX_TRUE_EXIT_CTLS)
    if not e.pin & msrs.PIN_BASED_VMX_PREEMPTION_TIMER and e.exit & msrs.VM_EXIT_SAVE_VMX_PREEMPTION_TIMER:
        e.fail("save_preemption_timer_without_timer", "If the 'activate VMX-preemption timer' VM-execution "
               "control is 0, the 'save VMX-preemption timer value' VM-exit control must also be 0")
    _check_msr_area(e, "vm_exit_msr_store_address", Field.VM_EXIT_MSR_STORE_COUNT, Field.VM_EXIT_MSR_STORE_ADDR,
                    "VM-exit MSR-store")
    _check_msr_area(e, "vm_exit_msr_load_address", Field.VM_EXIT_MSR_LOAD_COUNT, Field.VM_EXIT_MSR_LOAD_ADDR,
                    "VM-exit MSR-load")


def check_vm_entry_controls(e: Entry) -> None:
    """SDM 26.2.1.3 "VM-Entry Control Fields"."""
    _check_reserved_bits(e, "vm_entry_controls_reserved_bits", "VM-entry controls", e.entry,
                         msrs.IA32_VMX_ENTRY_CTLS, msrs.IA32_VMX_TRUE_ENTRY_CTLS)
    if e.injecting:
        _check_event_injection(e)
    _check_msr_area(e, "vm_entry_msr_load_address", Field.VM_ENTRY_MSR_LOAD_COUNT, Field.VM_ENTRY_MSR_LOAD_ADDR,
                    "VM-entry MSR-load")
    # hvsim's processor is never in SMM.
    if e.entry & (msrs.VM_ENTRY_SMM | msrs.VM_ENTRY_DEACT_DUAL_MONITOR):
        e.fail("smm_controls_outside_smm", "If the processor is not in SMM, the 'entry to SMM' and "
               "'deactivate dual-monitor treatment' VM-entry controls must be 0")


def _check_event_injection(e: Entry) -> None:
    """The VM-entry interruption-information checks of SDM 26.2.1.3 (valid bit is 1)."""
    info, kind, vector = e.intr_info, e.intr_type, e.vector
    if kind == INTR_TYPE_RESERVED or (kind == INTR_TYPE_NMI and not e.caps.allows("PIN_BASED_NMI_EXITING")) \
            or (kind == INTR_TYPE_OTHER_EVENT and not e.caps.allows("CPU_BASED_MONITOR_TRAP_FLAG")):
        e.fail("interruption_type_reserved", "The field's interruption type (bits 10:8) is not set to a reserved "
               "value (1; 2 without 'NMI exiting'; 7 without 'monitor trap flag')", f"info {info:#x}")
    if kind == INTR_TYPE_NMI and vector != NMI_VECTOR:
        e.fail("nmi_vector_not_2", "If the interruption type is NMI, the vector is 2", f"vector {vector}")
    if kind == INTR_TYPE_HARD_EXCEPTION and vector > 31:
        e.fail("hardware_exception_vector_above_31", "If the interruption type is hardware exception, the "
               "vector is at most 31", f"vector {vector}")
    if kind == INTR_TYPE_OTHER_EVENT and vector != 0:
        e.fail("other_event_vector_not_0", "If the interruption type is other event, the vector is 0 "
               "(pending MTF VM exit)", f"vector {vector}")
    # The guest is in protected mode unless 'unrestricted guest' lets CR0.PE be 0.
    protected = not e.unrestricted or bool(e.get(Field.GUEST_CR0) & X86_CR0_PE)
    lenient = bool(e.caps.msrs[msrs.IA32_VMX_BASIC] & msrs.VMX_BASIC_NO_HW_ERRCODE_CC)
    delivers = bool(info & INTR_INFO_DELIVER_CODE)
    if kind != INTR_TYPE_HARD_EXCEPTION or not protected:
        if delivers:
            e.fail("deliver_error_code_not_allowed", "The deliver-error-code bit (bit 11) is 0 if the "
                   "interruption type is not hardware exception or CR0.PE is 0 in the guest-state area",
                   f"info {info:#x}")
    elif not lenient and delivers != (vector in EXCEPTIONS_WITH_ERROR_CODE):
        e.fail("deliver_error_code_mismatch", "The deliver-error-code bit (bit 11) is 1 for a hardware exception "
               "in protected mode exactly when the vector is #DF, #TS, #NP, #SS, #GP, #PF or #AC "
               "(8, 10-14, 17), IA32_VMX_BASIC[56] being 0", f"vector {vector}, bit 11 = {int(delivers)}")
    if info & INTR_INFO_RESERVED:
        e.fail("interruption_info_reserved_bits", "Reserved bits in the field (30:12) must be 0",
               f"info {info:#x}")
    error_code = e.get(Field.VM_ENTRY_EXCEPTION_ERROR_CODE)
    if delivers and error_code & 0xFFFF_0000:
        e.fail("error_code_reserved_bits", "If the deliver-error-code bit (bit 11) is 1, bits 31:16 of the "
               "VM-entry exception error-code field are 0", f"error code {error_code:#x}")
    if kind in (INTR_TYPE_SOFT_INTR, INTR_TYPE_PRIV_SW_EXCEPTION, INTR_TYPE_SOFT_EXCEPTION):
        length = e.get(Field.VM_ENTRY_INSTRUCTION_LEN)
        least = 0 if e.caps.misc & msrs.VMX_MISC_ZERO_LEN_INS else 1
        if not least <= length <= 15:
            e.fail("instruction_length_out_of_range", "If the interruption type is software interrupt, privileged "
                   f"software exception, or software exception, the VM-entry instruction-length field is in the "
                   f"range {least}-15 (0 only if IA32_VMX_MISC[30] is 1)", f"length {length}")


# =================================================================================================
# 26.2.2-26.2.4 Checks on host state: VM-instruction error 8
# =================================================================================================
def _fixed_bits_problem(value: int, fixed0: int, fixed1: int) -> str | None:
    if value & fixed0 != fixed0:
        return f"bits fixed to 1 are clear: {fixed0 & ~value:#x}"
    if value & ~fixed1 & ALL_ONES:
        return f"bits fixed to 0 are set: {value & ~fixed1 & ALL_ONES:#x}"
    return None


def _pat_valid(pat: int) -> bool:
    return all((pat >> (8 * i)) & 0xFF in PAT_MEMORY_TYPES for i in range(8))


def check_host_control_registers_and_msrs(e: Entry) -> None:
    """SDM 26.2.2 "Checks on Host Control Registers, MSRs, and SSP"."""
    m, v = e.caps.msrs, e.values
    cr0, cr4, cr3 = v[Field.HOST_CR0], v[Field.HOST_CR4], v[Field.HOST_CR3]
    problem = _fixed_bits_problem(cr0, m[msrs.IA32_VMX_CR0_FIXED0], m[msrs.IA32_VMX_CR0_FIXED1])
    if problem:
        e.fail("host_cr0_fixed_bits", "The CR0 field must not set any bit to a value not supported in VMX "
               "operation (IA32_VMX_CR0_FIXED0/FIXED1)", f"host CR0 {cr0:#x}: {problem}")
    problem = _fixed_bits_problem(cr4, m[msrs.IA32_VMX_CR4_FIXED0], m[msrs.IA32_VMX_CR4_FIXED1])
    if problem:
        e.fail("host_cr4_fixed_bits", "The CR4 field must not set any bit to a value not supported in VMX "
               "operation (IA32_VMX_CR4_FIXED0/FIXED1)", f"host CR4 {cr4:#x}: {problem}")
    if cr3 >> e.caps.maxphyaddr:
        e.fail("host_cr3_beyond_physical_address_width", "The CR3 field must be such that bits 63:52 and bits "
               "in the range 51:32 beyond the processor's physical-address width are 0", f"host CR3 {cr3:#x}")
    for field, name in ((Field.HOST_IA32_SYSENTER_ESP, "IA32_SYSENTER_ESP"),
                        (Field.HOST_IA32_SYSENTER_EIP, "IA32_SYSENTER_EIP")):
        if not canonical(v[field]):
            e.fail("host_sysenter_canonical", f"The {name} field must contain a canonical address",
                   f"{v[field]:#x}")
    if e.exit & msrs.VM_EXIT_LOAD_IA32_PAT and not _pat_valid(e.get(Field.HOST_IA32_PAT)):
        e.fail("host_pat", "If the 'load IA32_PAT' VM-exit control is 1, the value of the IA32_PAT field must "
               "be one that could be written by WRMSR without fault at CPL 0: each byte 0, 1, 4, 5, 6 or 7",
               f"host PAT {e.get(Field.HOST_IA32_PAT):#x}")
    if e.exit & msrs.VM_EXIT_LOAD_IA32_EFER:
        efer = e.get(Field.HOST_IA32_EFER)
        if efer & EFER_RESERVED:
            e.fail("host_efer_reserved_bits", "If the 'load IA32_EFER' VM-exit control is 1, bits reserved in "
                   "the IA32_EFER MSR must be 0 in the field for that register", f"host EFER {efer:#x}")
        if bool(efer & EFER_LMA) != e.host_64 or bool(efer & EFER_LME) != e.host_64:
            e.fail("host_efer_lma_lme", "If the 'load IA32_EFER' VM-exit control is 1, the values of the LMA and "
                   "LME bits in the field must each be that of the 'host address-space size' VM-exit control",
                   f"host EFER {efer:#x}, host address-space size {int(e.host_64)}")


def check_host_segment_and_descriptor_table_registers(e: Entry) -> None:
    """SDM 26.2.3 "Checks on Host Segment and Descriptor-Table Registers"."""
    v = e.values
    for name, field in HOST_SELECTOR_FIELDS.items():
        selector = v[field]
        if selector & 7:
            e.fail("host_selector_rpl_ti", "In the selector field for each of CS, SS, DS, ES, FS, GS and TR, "
                   "the RPL (bits 1:0) and the TI flag (bit 2) must be 0", f"host {name} selector {selector:#x}")
    if v[Field.HOST_CS_SELECTOR] == 0:
        e.fail("host_cs_selector_zero", "The selector field for CS cannot be 0000H")
    if v[Field.HOST_TR_SELECTOR] == 0:
        e.fail("host_tr_selector_zero", "The selector field for TR cannot be 0000H")
    if v[Field.HOST_SS_SELECTOR] == 0 and not e.host_64:
        e.fail("host_ss_selector_zero", "The selector field for SS cannot be 0000H if the 'host address-space "
               "size' VM-exit control is 0")
    for name, field in HOST_BASE_FIELDS.items():
        base = v[field]
        if not canonical(base):
            e.fail("host_base_canonical", "The base-address fields for FS, GS, GDTR, IDTR, and TR must contain "
                   "canonical addresses", f"host {name} base {base:#x}")


def check_address_space_size(e: Entry) -> None:
    """SDM 26.2.4 "Checks Related to Address-Space Size"."""
    rip, cr4 = e.values[Field.HOST_RIP], e.values[Field.HOST_CR4]
    if not e.cpu.efer & EFER_LMA:
        if e.ia32e_guest:
            e.fail("ia32e_guest_outside_ia32e_mode", "If the logical processor is outside IA-32e mode "
                   "(IA32_EFER.LMA = 0) at the time of VM entry, the 'IA-32e mode guest' VM-entry control "
                   "must be 0")
        if e.host_64:
            e.fail("host_address_space_size_outside_ia32e_mode", "If the logical processor is outside IA-32e "
                   "mode at the time of VM entry, the 'host address-space size' VM-exit control must be 0")
    elif not e.host_64:
        e.fail("host_address_space_size_in_ia32e_mode", "If the logical processor is in IA-32e mode "
               "(IA32_EFER.LMA = 1) at the time of VM entry, the 'host address-space size' VM-exit control "
               "must be 1")
    if not e.host_64:
        if e.ia32e_guest:
            e.fail("ia32e_guest_without_64bit_host", "If the 'host address-space size' VM-exit control is 0, "
                   "the 'IA-32e mode guest' VM-entry control must be 0")
        if cr4 & X86_CR4_PCIDE:
            e.fail("host_pcide_without_64bit_host", "If the 'host address-space size' VM-exit control is 0, "
                   "bit 17 of the CR4 field (CR4.PCIDE) must be 0", f"host CR4 {cr4:#x}")
        if rip >> 32:
            e.fail("host_rip_high_bits", "If the 'host address-space size' VM-exit control is 0, bits 63:32 "
                   "in the RIP field must be 0", f"host RIP {rip:#x}")
    else:
        if not cr4 & X86_CR4_PAE:
            e.fail("host_pae_with_64bit_host", "If the 'host address-space size' VM-exit control is 1, bit 5 "
                   "of the CR4 field (CR4.PAE) must be 1", f"host CR4 {cr4:#x}")
        if not canonical(rip):
            e.fail("host_rip_canonical", "If the 'host address-space size' VM-exit control is 1, the RIP field "
                   "must contain a canonical address", f"host RIP {rip:#x}")


# =================================================================================================
# 26.3.1 Checks on the guest-state area: VM exit, basic reason 33
# =================================================================================================
def check_guest_control_registers_and_msrs(e: Entry) -> None:
    """SDM 26.3.1.1 "Checks on Guest Control Registers, Debug Registers, and MSRs"."""
    m, v = e.caps.msrs, e.values
    cr0, cr3, cr4 = v[Field.GUEST_CR0], v[Field.GUEST_CR3], v[Field.GUEST_CR4]
    fixed0 = m[msrs.IA32_VMX_CR0_FIXED0]
    if e.unrestricted:  # "unrestricted guest" lets PE and PG be 0
        fixed0 &= ~(X86_CR0_PE | X86_CR0_PG)
    problem = _fixed_bits_problem(cr0, fixed0, m[msrs.IA32_VMX_CR0_FIXED1])
    if problem:
        e.fail("guest_cr0_fixed_bits", "The CR0 field must not set any bit to a value not supported in VMX "
               "operation (PE and PG may be 0 with 'unrestricted guest')", f"guest CR0 {cr0:#x}: {problem}")
    if cr0 & X86_CR0_PG and not cr0 & X86_CR0_PE:
        e.fail("guest_cr0_pg_without_pe", "If bit 31 in the CR0 field (corresponding to PG) is 1, bit 0 "
               "(corresponding to PE) must also be 1", f"guest CR0 {cr0:#x}")
    problem = _fixed_bits_problem(cr4, m[msrs.IA32_VMX_CR4_FIXED0], m[msrs.IA32_VMX_CR4_FIXED1])
    if problem:
        e.fail("guest_cr4_fixed_bits", "The CR4 field must not set any bit to a value not supported in VMX "
               "operation (IA32_VMX_CR4_FIXED0/FIXED1)", f"guest CR4 {cr4:#x}: {problem}")
    if e.entry & msrs.VM_ENTRY_LOAD_DEBUG_CONTROLS:
        debugctl, dr7 = v[Field.GUEST_IA32_DEBUGCTL], v[Field.GUEST_DR7]
        if debugctl & DEBUGCTL_RESERVED:
            e.fail("guest_debugctl_reserved_bits", "If the 'load debug controls' VM-entry control is 1, bits "
                   "reserved in the IA32_DEBUGCTL MSR must be 0 in the field for that register",
                   f"guest IA32_DEBUGCTL {debugctl:#x}")
        if dr7 >> 32:
            e.fail("guest_dr7_high_bits", "If the 'load debug controls' VM-entry control is 1, bits 63:32 in "
                   "the DR7 field must be 0", f"guest DR7 {dr7:#x}")
    if e.ia32e_guest:
        if not cr0 & X86_CR0_PG or not cr4 & X86_CR4_PAE:
            e.fail("ia32e_guest_without_paging_and_pae", "If the 'IA-32e mode guest' VM-entry control is 1, "
                   "bit 31 in the CR0 field (PG) and bit 5 in the CR4 field (PAE) must each be 1",
                   f"guest CR0 {cr0:#x}, CR4 {cr4:#x}")
    elif cr4 & X86_CR4_PCIDE:
        e.fail("guest_pcide_without_ia32e_guest", "If the 'IA-32e mode guest' VM-entry control is 0, bit 17 in "
               "the CR4 field (PCIDE) must be 0", f"guest CR4 {cr4:#x}")
    if cr3 >> e.caps.maxphyaddr:
        e.fail("guest_cr3_beyond_physical_address_width", "The CR3 field must be such that bits 63:52 and bits "
               "in the range 51:32 beyond the processor's physical-address width are 0", f"guest CR3 {cr3:#x}")
    for field, name in ((Field.GUEST_SYSENTER_ESP, "IA32_SYSENTER_ESP"),
                        (Field.GUEST_SYSENTER_EIP, "IA32_SYSENTER_EIP")):
        if not canonical(v[field]):
            e.fail("guest_sysenter_canonical", f"The {name} field must contain a canonical address",
                   f"{v[field]:#x}")
    if e.entry & msrs.VM_ENTRY_LOAD_IA32_PAT and not _pat_valid(e.get(Field.GUEST_IA32_PAT)):
        e.fail("guest_pat", "If the 'load IA32_PAT' VM-entry control is 1, the value of the IA32_PAT field must "
               "be one that could be written by WRMSR without fault at CPL 0: each byte 0, 1, 4, 5, 6 or 7",
               f"guest PAT {e.get(Field.GUEST_IA32_PAT):#x}")
    if e.entry & msrs.VM_ENTRY_LOAD_IA32_EFER:
        efer = e.get(Field.GUEST_IA32_EFER)
        if efer & EFER_RESERVED:
            e.fail("guest_efer_reserved_bits", "If the 'load IA32_EFER' VM-entry control is 1, bits reserved in "
                   "the IA32_EFER MSR must be 0 in the field for that register", f"guest EFER {efer:#x}")
        if bool(efer & EFER_LMA) != e.ia32e_guest:
            e.fail("guest_efer_lma", "If the 'load IA32_EFER' VM-entry control is 1, bit 10 (LMA) of the "
                   "IA32_EFER field must equal the value of the 'IA-32e mode guest' VM-entry control",
                   f"guest EFER {efer:#x}, IA-32e mode guest {int(e.ia32e_guest)}")
        if cr0 & X86_CR0_PG and bool(efer & EFER_LME) != bool(efer & EFER_LMA):
            e.fail("guest_efer_lme", "If the 'load IA32_EFER' VM-entry control is 1 and CR0.PG is 1 in the "
                   "guest-state area, bit 8 (LME) of the IA32_EFER field must equal bit 10 (LMA)",
                   f"guest EFER {efer:#x}")


def _granularity_ok(limit: int, ar: int) -> bool:
    """"If any bit in the limit field in the range 11:0 is 0, G must be 0. If any bit in the limit
    field in the range 31:20 is 1, G must be 1." """
    if limit & 0xFFF != 0xFFF and ar & AR_G:
        return False
    return not (limit & 0xFFF0_0000 and not ar & AR_G)


def _check_v8086_segments(e: Entry) -> None:
    for name in ("CS", "SS", "DS", "ES", "FS", "GS"):
        selector, base, limit, ar = e.segment(name)
        if base != selector << 4:
            e.fail("guest_v8086_segment_base", "If the guest will be virtual-8086, the address must be the "
                   "selector field shifted left 4 bits", f"{name} selector {selector:#x}, base {base:#x}")
        if limit != 0xFFFF:
            e.fail("guest_v8086_segment_limit", "If the guest will be virtual-8086, the field must be 0000FFFFH",
                   f"{name} limit {limit:#x}")
        if ar != AR_V8086:
            e.fail("guest_v8086_segment_access_rights", "If the guest will be virtual-8086, the field must be "
                   "000000F3H", f"{name} access rights {ar:#x}")


def _check_common_access_rights(e: Entry, name: str, limit: int, ar: int) -> None:
    """The S, P, reserved and G rules shared by CS and usable ES/SS/DS/FS/GS (checks named
    guest_cs_* for CS, guest_segment_* for the others)."""
    who = "guest_cs" if name == "CS" else "guest_segment"
    if not ar & AR_S:
        e.fail(f"{who}_s_bit", "Bit 4 (S) must be 1 for CS, and for ES, FS, GS, DS, SS if usable",
               f"{name} access rights {ar:#x}")
    if not ar & AR_P:
        e.fail(f"{who}_not_present", "Bit 7 (P) must be 1 for CS, and for ES, FS, GS, DS, SS if usable",
               f"{name} access rights {ar:#x}")
    if ar & AR_RESERVED_11_8:
        e.fail(f"{who}_reserved_bits_11_8", "Bits 11:8 of the access-rights field are reserved and must "
               "be 0 (CS, and usable ES, FS, GS, DS, SS)", f"{name} access rights {ar:#x}")
    if not _granularity_ok(limit, ar):
        e.fail(f"{who}_granularity", "G (bit 15): if any bit in the limit field in the range 11:0 is 0, "
               "G must be 0; if any bit in the limit field in the range 31:20 is 1, G must be 1",
               f"{name} limit {limit:#x}, access rights {ar:#x}")
    if ar & AR_RESERVED_31_17:
        e.fail(f"{who}_reserved_bits_31_17", "Bits 31:17 of the access-rights field are reserved and "
               "must be 0 (CS, and usable ES, FS, GS, DS, SS)", f"{name} access rights {ar:#x}")


def check_guest_segment_registers(e: Entry) -> None:
    """SDM 26.3.1.2 "Checks on Guest Segment Registers"."""
    v8086 = bool(e.values[Field.GUEST_RFLAGS] & X86_EFLAGS_VM)
    cs_sel, cs_base, cs_limit, cs_ar = e.segment("CS")
    ss_sel, _ss_base, _ss_limit, ss_ar = e.segment("SS")
    tr_sel, tr_base, tr_limit, tr_ar = e.segment("TR")
    ldtr_sel, ldtr_base, ldtr_limit, ldtr_ar = e.segment("LDTR")
    ldtr_usable, cs_type, ss_dpl = not ldtr_ar & AR_UNUSABLE, cs_ar & AR_TYPE_MASK, (ss_ar >> AR_DPL_SHIFT) & 3

    # Selector fields
    if tr_sel & 4:
        e.fail("guest_tr_selector_ti", "TR. The TI flag (bit 2) must be 0", f"TR selector {tr_sel:#x}")
    if ldtr_usable and ldtr_sel & 4:
        e.fail("guest_ldtr_selector_ti", "LDTR. If LDTR is usable, the TI flag (bit 2) must be 0",
               f"LDTR selector {ldtr_sel:#x}")
    if not v8086 and not e.unrestricted and ss_sel & 3 != cs_sel & 3:
        e.fail("guest_ss_rpl_not_cs_rpl", "SS. If the guest will not be virtual-8086 and the 'unrestricted "
               "guest' VM-execution control is 0, the RPL (bits 1:0) must equal the RPL of the selector field "
               "for CS", f"SS selector {ss_sel:#x}, CS selector {cs_sel:#x}")

    if v8086:
        _check_v8086_segments(e)

    # Base-address fields
    for name, base in (("TR", tr_base), ("FS", e.values[Field.GUEST_FS_BASE]), ("GS", e.values[Field.GUEST_GS_BASE])):
        if not canonical(base):
            e.fail("guest_segment_base_canonical", "TR, FS, GS. The address must be canonical",
                   f"{name} base {base:#x}")
    if ldtr_usable and not canonical(ldtr_base):
        e.fail("guest_segment_base_canonical", "LDTR. If usable, the address must be canonical",
               f"LDTR base {ldtr_base:#x}")
    if cs_base >> 32:
        e.fail("guest_cs_base_high_bits", "CS. Bits 63:32 of the address must be zero", f"CS base {cs_base:#x}")
    for name in ("SS", "DS", "ES"):
        _sel, base, _limit, ar = e.segment(name)
        if not ar & AR_UNUSABLE and base >> 32:
            e.fail("guest_segment_base_high_bits", "SS, DS, ES. If usable, bits 63:32 of the address must be zero",
                   f"{name} base {base:#x}")

    if not v8086:
        # Access-rights fields, CS
        allowed = {9, 11, 13, 15} | ({3} if e.unrestricted else set())
        if cs_type not in allowed:
            e.fail("guest_cs_type", "CS. Type must be 9, 11, 13, or 15 (accessed code segment); 3 (read/write "
                   "accessed data) is allowed too if 'unrestricted guest' is 1", f"CS access rights {cs_ar:#x}")
        _check_common_access_rights(e, "CS", cs_limit, cs_ar)
        cs_dpl = (cs_ar >> AR_DPL_SHIFT) & 3
        if cs_type == 3 and cs_dpl != 0:
            e.fail("guest_cs_dpl", "CS. If the Type is 3 (read/write accessed expand-up data), the DPL must be 0",
                   f"CS access rights {cs_ar:#x}")
        if cs_type in (9, 11) and cs_dpl != ss_dpl:
            e.fail("guest_cs_dpl", "CS. If the Type is 9 or 11 (non-conforming code segment), the DPL must equal "
                   "the DPL in the access-rights field for SS", f"CS DPL {cs_dpl}, SS DPL {ss_dpl}")
        if cs_type in (13, 15) and cs_dpl > ss_dpl:
            e.fail("guest_cs_dpl", "CS. If the Type is 13 or 15 (conforming code segment), the DPL cannot be "
                   "greater than the DPL in the access-rights field for SS", f"CS DPL {cs_dpl}, SS DPL {ss_dpl}")
        if e.ia32e_guest and cs_ar & AR_L and cs_ar & AR_DB:
            e.fail("guest_cs_l_and_db", "CS. D/B (bit 14): if the guest will be IA-32e mode and the L bit (bit 13) "
                   "in the access-rights field is 1, the D/B bit must be 0", f"CS access rights {cs_ar:#x}")
        # SS
        if not ss_ar & AR_UNUSABLE and ss_ar & AR_TYPE_MASK not in (3, 7):
            e.fail("guest_ss_type", "SS. If usable, the Type must be 3 or 7 (read/write, accessed data segment)",
                   f"SS access rights {ss_ar:#x}")
        if not e.unrestricted and ss_dpl != ss_sel & 3:
            e.fail("guest_ss_dpl", "SS. If the 'unrestricted guest' VM-execution control is 0, the DPL must equal "
                   "the RPL from the selector field", f"SS DPL {ss_dpl}, selector {ss_sel:#x}")
        if ss_dpl != 0 and (cs_type == 3 or not e.values[Field.GUEST_CR0] & X86_CR0_PE):
            e.fail("guest_ss_dpl", "SS. The DPL must be 0 either if the Type in the access-rights field for CS is "
                   "3 (read/write accessed expand-up data) or if bit 0 in the CR0 field (PE) is 0",
                   f"SS DPL {ss_dpl}")
        # DS, ES, FS, GS (type and DPL), then the rules all of them share
        for name in ("DS", "ES", "FS", "GS"):
            selector, _base, limit, ar = e.segment(name)
            if ar & AR_UNUSABLE:
                continue
            kind = ar & AR_TYPE_MASK
            if not kind & TYPE_ACCESSED or (kind & TYPE_CODE and not kind & TYPE_READABLE):
                e.fail("guest_data_segment_type", "DS, ES, FS, GS. If usable, bit 0 of the Type (accessed) must "
                       "be 1, and if bit 3 (code segment) is 1, bit 1 (readable) must be 1",
                       f"{name} access rights {ar:#x}")
            if not e.unrestricted and kind <= 11 and (ar >> AR_DPL_SHIFT) & 3 < selector & 3:
                e.fail("guest_data_segment_dpl", "DS, ES, FS, GS. If 'unrestricted guest' is 0 and the register is "
                       "usable with a Type in the range 0-11 (data or non-conforming code), the DPL cannot be "
                       "less than the RPL in the selector field", f"{name} access rights {ar:#x}, "
                       f"selector {selector:#x}")
        for name in ("SS", "DS", "ES", "FS", "GS"):
            _selector, _base, limit, ar = e.segment(name)
            if not ar & AR_UNUSABLE:
                _check_common_access_rights(e, name, limit, ar)

    # TR
    tss_types = (TSS_BUSY_32,) if e.ia32e_guest else (TSS_BUSY_16, TSS_BUSY_32)
    if tr_ar & AR_TYPE_MASK not in tss_types:
        e.fail("guest_tr_type", "TR. Type: if the guest will not be IA-32e mode, the Type must be 3 (16-bit busy "
               "TSS) or 11 (32-bit busy TSS); if it will be IA-32e mode, the Type must be 11 (64-bit busy TSS)",
               f"TR access rights {tr_ar:#x}")
    _check_system_segment(e, "TR", tr_limit, tr_ar, "guest_tr_access_rights")
    if tr_ar & AR_UNUSABLE:
        e.fail("guest_tr_unusable", "TR. Bit 16 (unusable) must be 0", f"TR access rights {tr_ar:#x}")
    # LDTR
    if ldtr_usable:
        if ldtr_ar & AR_TYPE_MASK != LDT_TYPE:
            e.fail("guest_ldtr_type", "LDTR. If usable, the Type must be 2 (LDT)", f"LDTR access rights {ldtr_ar:#x}")
        _check_system_segment(e, "LDTR", ldtr_limit, ldtr_ar, "guest_ldtr_access_rights")


def _check_system_segment(e: Entry, name: str, limit: int, ar: int, check: str) -> None:
    """S = 0, P = 1, reserved bits, G: the rules TR and a usable LDTR share."""
    if ar & AR_S:
        e.fail(check, f"{name}. Bit 4 (S) must be 0", f"{name} access rights {ar:#x}")
    if not ar & AR_P:
        e.fail(check, f"{name}. Bit 7 (P) must be 1", f"{name} access rights {ar:#x}")
    if ar & (AR_RESERVED_11_8 | AR_RESERVED_31_17):
        e.fail(check, f"{name}. Bits 11:8 and 31:17 are reserved and must be 0", f"{name} access rights {ar:#x}")
    if not _granularity_ok(limit, ar):
        e.fail(check, f"{name}. G (bit 15): if any bit in the limit field in the range 11:0 is 0, G must be 0; "
               "if any bit in the limit field in the range 31:20 is 1, G must be 1",
               f"{name} limit {limit:#x}, access rights {ar:#x}")


def check_guest_descriptor_table_registers(e: Entry) -> None:
    """SDM 26.3.1.3 "Checks on Guest Descriptor-Table Registers"."""
    for name, (base_field, limit_field) in GUEST_TABLE_FIELDS.items():
        base, limit = e.values[base_field], e.values[limit_field]
        if not canonical(base):
            e.fail("guest_descriptor_table_base_canonical", "The base-address fields for GDTR and IDTR must "
                   "contain canonical addresses", f"{name} base {base:#x}")
        if limit & 0xFFFF_0000:
            e.fail("guest_descriptor_table_limit_high_bits", "Bits 31:16 of each limit field (GDTR, IDTR) must "
                   "be 0", f"{name} limit {limit:#x}")


def check_guest_rip_and_rflags(e: Entry) -> None:
    """SDM 26.3.1.4 "Checks on Guest RIP, RFLAGS, and SSP"."""
    v = e.values
    rip, rflags, cs_ar = v[Field.GUEST_RIP], v[Field.GUEST_RFLAGS], v[Field.GUEST_CS_AR_BYTES]
    long_mode = e.ia32e_guest and bool(cs_ar & AR_L)
    if not long_mode and rip >> 32:
        e.fail("guest_rip_high_bits", "RIP. Bits 63:32 must be 0 if the 'IA-32e mode guest' VM-entry control is "
               "0 or if the L bit (bit 13) in the access-rights field for CS is 0", f"guest RIP {rip:#x}")
    if long_mode and not canonical(rip):
        e.fail("guest_rip_canonical", "RIP. If the processor supports N < 64 linear-address bits, bits 63:N must "
               "be identical if the 'IA-32e mode guest' VM-entry control is 1 and L is 1 in the access-rights "
               "field for CS", f"guest RIP {rip:#x}")
    if rflags & RFLAGS_RESERVED_0:
        e.fail("guest_rflags_reserved_bits", "RFLAGS. Reserved bits 63:22 (bits 31:22 on processors without "
               "Intel 64), bit 15, bit 5 and bit 3 must be 0 in the field", f"guest RFLAGS {rflags:#x}")
    if not rflags & 2:
        e.fail("guest_rflags_bit_1", "RFLAGS. Reserved bit 1 must be 1", f"guest RFLAGS {rflags:#x}")
    if rflags & X86_EFLAGS_VM and (e.ia32e_guest or not v[Field.GUEST_CR0] & X86_CR0_PE):
        e.fail("guest_rflags_vm", "RFLAGS. The VM flag (bit 17) must be 0 either if the 'IA-32e mode guest' "
               "VM-entry control is 1 or if bit 0 in the CR0 field (PE) is 0", f"guest RFLAGS {rflags:#x}")
    if e.injects(INTR_TYPE_EXT_INTR) and not rflags & X86_EFLAGS_IF:
        e.fail("guest_rflags_if_for_external_interrupt", "RFLAGS. The IF flag (bit 9) must be 1 if the valid bit "
               "is 1 in the VM-entry interruption-information field and the interruption type is external "
               "interrupt", f"guest RFLAGS {rflags:#x}")


def check_guest_non_register_state(e: Entry) -> None:
    """SDM 26.3.1.5 "Checks on Guest Non-Register State"."""
    v = e.values
    activity, intr = v[Field.GUEST_ACTIVITY_STATE], v[Field.GUEST_INTERRUPTIBILITY_INFO]
    rflags, pending = v[Field.GUEST_RFLAGS], v[Field.GUEST_PENDING_DBG_EXCEPTIONS]

    # Activity state
    if activity > GUEST_ACTIVITY_WAIT_SIPI or (activity and not e.caps.misc & ACTIVITY_STATE_MISC_BIT[activity]):
        e.fail("guest_activity_state", "The activity-state field must contain a value in the range 0-3, "
               "indicating an activity state supported by the implementation (IA32_VMX_MISC bits 8:6)",
               f"activity state {activity}")
    if activity == GUEST_ACTIVITY_HLT and (v[Field.GUEST_SS_AR_BYTES] >> AR_DPL_SHIFT) & 3:
        e.fail("guest_hlt_with_ss_dpl_not_0", "The activity-state field must not indicate the HLT state if the "
               "DPL (bits 6:5) in the access-rights field for SS is not 0", f"SS access rights "
               f"{v[Field.GUEST_SS_AR_BYTES]:#x}")
    if activity != GUEST_ACTIVITY_ACTIVE and intr & (GUEST_INTR_STATE_STI | GUEST_INTR_STATE_MOV_SS):
        e.fail("guest_inactive_with_sti_or_mov_ss_blocking", "The activity-state field must indicate the active "
               "state if the interruptibility-state field indicates blocking by either MOV-SS or by STI",
               f"activity state {activity}, interruptibility {intr:#x}")
    if e.injecting and not _event_allowed_in(activity, e.intr_type, e.vector):
        e.fail("guest_event_not_allowed_in_activity_state", "If the valid bit in the VM-entry interruption-"
               "information field is 1, the interruption must not be one the activity state blocks: in HLT only "
               "external interrupts, NMIs, #DB, #MC and MTF; in shutdown only NMIs and #MC; none in "
               "wait-for-SIPI", f"activity state {ACTIVITY_STATE_NAMES.get(activity, activity)}, "
               f"type {e.intr_type}, vector {e.vector}")

    # Interruptibility state
    if intr & GUEST_INTR_STATE_RESERVED:
        e.fail("guest_interruptibility_reserved_bits", "Interruptibility state. The reserved bits (31:5) must be 0",
               f"interruptibility {intr:#x}")
    if intr & GUEST_INTR_STATE_ENCLAVE_INTR:
        e.fail("guest_interruptibility_enclave", "Interruptibility state. If bit 4 (enclave interruption) is 1, "
               "bit 1 must be 0 and the processor must support SGX (hvsim's does not)", f"interruptibility {intr:#x}")
    if intr & GUEST_INTR_STATE_STI and intr & GUEST_INTR_STATE_MOV_SS:
        e.fail("guest_sti_and_mov_ss_blocking", "Interruptibility state. The field cannot indicate blocking by both "
               "STI and MOV SS (bits 0 and 1 cannot both be 1)", f"interruptibility {intr:#x}")
    if intr & GUEST_INTR_STATE_STI and not rflags & X86_EFLAGS_IF:
        e.fail("guest_sti_blocking_with_if_clear", "Interruptibility state. Bit 0 (blocking by STI) must be 0 if the "
               "IF flag (bit 9) is 0 in the RFLAGS field", f"interruptibility {intr:#x}, RFLAGS {rflags:#x}")
    if e.injects(INTR_TYPE_EXT_INTR) and intr & (GUEST_INTR_STATE_STI | GUEST_INTR_STATE_MOV_SS):
        e.fail("guest_blocking_with_external_interrupt_injection", "Interruptibility state. Bit 0 (blocking by "
               "STI) and bit 1 (blocking by MOV-SS) must both be 0 if the valid bit in the VM-entry "
               "interruption-information field is 1 and the interruption type is external interrupt",
               f"interruptibility {intr:#x}")
    if e.injects(INTR_TYPE_NMI) and intr & GUEST_INTR_STATE_MOV_SS:
        e.fail("guest_mov_ss_blocking_with_nmi_injection", "Interruptibility state. Bit 1 (blocking by MOV-SS) "
               "must be 0 if the valid bit in the VM-entry interruption-information field is 1 and the "
               "interruption type is NMI", f"interruptibility {intr:#x}")
    if intr & GUEST_INTR_STATE_SMI:  # hvsim's processor is never in SMM
        e.fail("guest_smi_blocking_outside_smm", "Interruptibility state. Bit 2 (blocking by SMI) must be 0 if the "
               "processor is not in SMM", f"interruptibility {intr:#x}")
    if e.pin & msrs.PIN_BASED_VIRTUAL_NMIS and e.injects(INTR_TYPE_NMI) and intr & GUEST_INTR_STATE_NMI:
        e.fail("guest_nmi_blocking_with_virtual_nmi_injection", "Interruptibility state. Bit 3 (blocking by NMI) "
               "must be 0 if the 'virtual NMIs' VM-execution control is 1, the valid bit in the VM-entry "
               "interruption-information field is 1, and the interruption type is NMI", f"interruptibility {intr:#x}")
    if e.injects(INTR_TYPE_NMI) and intr & GUEST_INTR_STATE_STI:
        e.fail("guest_sti_blocking_with_nmi_injection", "A processor may require bit 0 (blocking by STI) to be 0 "
               "if the interruption type of a valid VM-entry interruption-information field is NMI (hvsim's does; "
               "exit qualification 3)", f"interruptibility {intr:#x}", ENTRY_FAIL_NMI_STI)

    # Pending debug exceptions
    if pending & PENDING_DBG_RESERVED:
        e.fail("guest_pending_debug_exceptions_reserved_bits", "Pending debug exceptions. Bits 11:4, bit 13, bit 15, "
               "and bits 63:17 must be 0", f"pending debug exceptions {pending:#x}")
    if pending & PENDING_DBG_RTM:
        e.fail("guest_pending_debug_exceptions_rtm", "Pending debug exceptions. Bit 16 (RTM) must be 0 if the "
               "processor does not support RTM (hvsim's does not)", f"pending debug exceptions {pending:#x}")
    if intr & (GUEST_INTR_STATE_STI | GUEST_INTR_STATE_MOV_SS) or activity == GUEST_ACTIVITY_HLT:
        single_step = bool(rflags & X86_EFLAGS_TF) and not v[Field.GUEST_IA32_DEBUGCTL] & DEBUGCTL_BTF
        if single_step and not pending & PENDING_DBG_BS:
            e.fail("guest_pending_bs_for_single_step", "Pending debug exceptions. With blocking by STI or MOV-SS, or "
                   "the HLT activity state: bit 14 (BS) must be 1 if the TF flag (bit 8) in the RFLAGS field is 1 "
                   "and the BTF flag (bit 1) in the IA32_DEBUGCTL field is 0", f"pending {pending:#x}")
        if not single_step and pending & PENDING_DBG_BS:
            e.fail("guest_pending_bs_without_single_step", "Pending debug exceptions. With blocking by STI or MOV-SS, "
                   "or the HLT activity state: bit 14 (BS) must be 0 if the TF flag (bit 8) in the RFLAGS field is "
                   "0 or the BTF flag (bit 1) in the IA32_DEBUGCTL field is 1", f"pending {pending:#x}")

    _check_vmcs_link_pointer(e)


def _event_allowed_in(activity: int, kind: int, vector: int) -> bool:
    """SDM 26.3.1.5: the events an activity state lets VM entry inject."""
    if activity == GUEST_ACTIVITY_HLT:
        return kind in (INTR_TYPE_EXT_INTR, INTR_TYPE_NMI) or (kind == INTR_TYPE_HARD_EXCEPTION and vector in (
            DB_VECTOR, MC_VECTOR)) or (kind == INTR_TYPE_OTHER_EVENT and vector == 0)
    if activity == GUEST_ACTIVITY_SHUTDOWN:
        return kind == INTR_TYPE_NMI or (kind == INTR_TYPE_HARD_EXCEPTION and vector == MC_VECTOR)
    return activity != GUEST_ACTIVITY_WAIT_SIPI  # active: anything


def _check_vmcs_link_pointer(e: Entry) -> None:
    """The VMCS link pointer rules of SDM 26.3.1.5; a failure has exit qualification 4."""
    pointer = e.values[Field.VMCS_LINK_POINTER]
    if pointer == ALL_ONES:
        return
    rule = "VMCS link pointer. If it is not FFFFFFFF_FFFFFFFFH, "
    if e.bad_address(pointer):
        e.fail("vmcs_link_pointer", rule + "bits 11:0 must be 0 and bits beyond the processor's physical-address "
               "width must be 0", f"pointer {pointer:#x}", ENTRY_FAIL_VMCS_LINK_PTR)
        return
    header = read_u32(e.memory, pointer)
    shadowing = bool(e.proc2 & msrs.SECONDARY_EXEC_SHADOW_VMCS)
    if header & 0x7FFF_FFFF != e.caps.revision_id or bool(header >> 31) != shadowing:
        e.fail("vmcs_link_pointer", rule + "bits 30:0 of the 4 bytes it references must contain the processor's "
               "VMCS revision identifier and bit 31 the setting of the 'VMCS shadowing' VM-execution control "
               "(all ones is the value without VMCS shadowing)", f"pointer {pointer:#x}, header {header:#x}",
               ENTRY_FAIL_VMCS_LINK_PTR)
    if pointer == e.vmcs.address:
        e.fail("vmcs_link_pointer", rule + "it must not contain the current-VMCS pointer (processor not in SMM)",
               f"pointer {pointer:#x}", ENTRY_FAIL_VMCS_LINK_PTR)


def check_guest_pdptes(e: Entry) -> None:
    """SDM 26.3.1.6 "Checks on Guest Page-Directory-Pointer-Table Entries": PAE paging outside IA-32e
    mode. With EPT the PDPTE fields are checked, without it the four entries CR3 points to;
    exit qualification 2."""
    v = e.values
    if not (v[Field.GUEST_CR0] & X86_CR0_PG and v[Field.GUEST_CR4] & X86_CR4_PAE) or e.ia32e_guest:
        return
    if e.proc2 & msrs.SECONDARY_EXEC_ENABLE_EPT:
        entries = [e.get(Field.GUEST_PDPTR0 + 2 * i) for i in range(4)]
        where = "PDPTE fields"
    else:
        address = v[Field.GUEST_CR3] & 0xFFFF_FFE0
        try:
            entries = list(struct.unpack("<4Q", e.memory.read(address, 32)))
        except GuestMemoryError:
            entries = [ALL_ONES] * 4
        where = f"PDPTEs at {address:#x}"
    reserved = 0x1E6 | (ALL_ONES << e.caps.maxphyaddr & ALL_ONES)  # bits 2:1, 8:5, 63:MAXPHYADDR
    for i, pdpte in enumerate(entries):
        if pdpte & 1 and pdpte & reserved:
            e.fail("guest_pdpte_reserved_bits", "If PAE paging will be in use, a PDPTE whose P bit is 1 must have "
                   "its reserved bits (2:1, 8:5 and those beyond the physical-address width) clear",
                   f"{where}: PDPTE{i} {pdpte:#x}", ENTRY_FAIL_PDPTE)


# =================================================================================================
# 26.4 Loading MSRs: VM exit, basic reason 34
# =================================================================================================
def check_vm_entry_msr_load_area(e: Entry) -> None:
    """SDM 26.4: each entry of the VM-entry MSR-load area, in order; the exit qualification is the
    entry's number, counting from 1. hvsim checks the entries but does not load the MSRs (WRMSR's
    own #GP rules are not modelled)."""
    count, address = e.get(Field.VM_ENTRY_MSR_LOAD_COUNT), e.get(Field.VM_ENTRY_MSR_LOAD_ADDR)
    for n in range(1, count + 1):
        try:
            low, _value = struct.unpack("<QQ", e.memory.read(address + 16 * (n - 1), 16))
        except GuestMemoryError:
            low = ALL_ONES
        index = low & 0xFFFF_FFFF
        if low >> 32:
            e.fail("msr_load_entry_reserved_bits", "VM-entry MSR-load area: bits 63:32 of an entry are reserved "
                   "and must be 0", f"entry {n}: {low:#x}", n)
        elif index in (MSR_FS_BASE, MSR_GS_BASE):
            e.fail("msr_load_fs_gs_base", "VM-entry MSR-load area: the MSR index cannot be C0000100H (IA32_FS_BASE) "
                   "or C0000101H (IA32_GS_BASE)", f"entry {n}: index {index:#x}", n)
        elif index >> 8 == 0x8:
            e.fail("msr_load_x2apic", "VM-entry MSR-load area: bits 31:8 of the MSR index cannot be 000008H "
                   "(x2APIC MSRs)", f"entry {n}: index {index:#x}", n)
        elif index == MSR_IA32_SMM_MONITOR_CTL:
            e.fail("msr_load_smm_monitor_ctl", "VM-entry MSR-load area: the MSR index cannot be 9EH "
                   "(IA32_SMM_MONITOR_CTL)", f"entry {n}: index {index:#x}", n)


# =================================================================================================
# The two steps VMLAUNCH/VMRESUME take
# =================================================================================================
CONTROL_CHECKS = (("26.2.1.1", check_vm_execution_controls), ("26.2.1.2", check_vm_exit_controls),
                  ("26.2.1.3", check_vm_entry_controls))
HOST_STATE_CHECKS = (("26.2.2", check_host_control_registers_and_msrs),
                     ("26.2.3", check_host_segment_and_descriptor_table_registers),
                     ("26.2.4", check_address_space_size))
GUEST_STATE_CHECKS = (("26.3.1.1", check_guest_control_registers_and_msrs),
                      ("26.3.1.2", check_guest_segment_registers),
                      ("26.3.1.3", check_guest_descriptor_table_registers),
                      ("26.3.1.4", check_guest_rip_and_rflags),
                      ("26.3.1.5", check_guest_non_register_state),
                      ("26.3.1.6", check_guest_pdptes))


def _run(e: Entry, checks) -> EntryCheckFailed | None:
    try:
        for section, check in checks:
            e.section = section
            check(e)
    except EntryCheckFailed as failure:
        return failure
    return None


def check_vmx_controls_and_host_state(e: Entry) -> tuple[int, EntryCheckFailed | None]:
    """SDM 26.2: (0, None), or (VM-instruction error 7 or 8, the failure)."""
    failure = _run(e, CONTROL_CHECKS)
    if failure:
        return VMXERR_ENTRY_INVALID_CONTROL_FIELD, failure
    failure = _run(e, HOST_STATE_CHECKS)
    if failure:
        return VMXERR_ENTRY_INVALID_HOST_STATE_FIELD, failure
    return 0, None


def check_guest_state(e: Entry) -> tuple[int, EntryCheckFailed | None]:
    """SDM 26.3.1 then 26.4: (0, None), or (basic exit reason 33 or 34, the failure, whose
    ``qualification`` is the exit qualification)."""
    failure = _run(e, GUEST_STATE_CHECKS)
    if failure:
        return EXIT_REASON_INVALID_STATE, failure
    failure = _run(e, (("26.4", check_vm_entry_msr_load_area),))
    if failure:
        return EXIT_REASON_MSR_LOAD_FAIL, failure
    return 0, None
