"""The virtual-machine control structure: every field of Intel SDM Vol. 3D Appendix B, the field
encoding of SDM Vol. 3C 24.11.2 (Table 24-21), one VMCS's field values, and the VMCS region in
memory (SDM 24.2).

Names are Linux's (``arch/x86/include/asm/vmx.h``, ``enum vmcs_field``); fields Linux does not
name carry a name in the same style (see ``LINUX_LACKS``). Module constants hold the encodings:
``GUEST_RIP == 0x681E``, ``EPT_POINTER_HIGH == 0x201B``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from hvsim.core.memory import GuestMemoryError

# -- the encoding of a field (SDM 24.11.2, Table 24-21) -----------------------------------------
ACCESS_FULL, ACCESS_HIGH = 0, 1  # bit 0; HIGH is allowed only for 64-bit fields
TYPE_CONTROL, TYPE_READ_ONLY, TYPE_GUEST, TYPE_HOST = 0, 1, 2, 3  # bits 11:10
WIDTH_16, WIDTH_64, WIDTH_32, WIDTH_NATURAL = 0, 1, 2, 3  # bits 14:13
ENCODING_RESERVED = 0xFFFF_9000  # bit 12 and bits 31:15 must be 0
TYPE_NAMES = {TYPE_CONTROL: "control", TYPE_READ_ONLY: "read-only data (VM-exit information)",
              TYPE_GUEST: "guest state", TYPE_HOST: "host state"}
WIDTH_NAMES = {WIDTH_16: "16-bit", WIDTH_64: "64-bit", WIDTH_32: "32-bit", WIDTH_NATURAL: "natural-width"}
WIDTH_MASK = {WIDTH_16: 0xFFFF, WIDTH_32: 0xFFFF_FFFF, WIDTH_64: (1 << 64) - 1, WIDTH_NATURAL: (1 << 64) - 1}


@dataclass(frozen=True, slots=True)
class Encoding:
    """A 32-bit VMCS-component encoding taken apart."""

    access: int
    index: int
    type: int
    width: int
    reserved: int  # the reserved bits that are set; non-zero means no field has this encoding

    @classmethod
    def of(cls, encoding: int) -> Encoding:
        return cls(encoding & 1, (encoding >> 1) & 0x1FF, (encoding >> 10) & 3, (encoding >> 13) & 3,
                   encoding & ENCODING_RESERVED)


class Field(enum.IntEnum):
    """Every VMCS field (its FULL encoding), in the order of SDM Appendix B's tables B-1..B-15."""

    # B-1 16-bit control fields
    VIRTUAL_PROCESSOR_ID = 0x0000
    POSTED_INTR_NV = 0x0002
    EPTP_INDEX = 0x0004
    HLAT_PREFIX_SIZE = 0x0006
    LAST_PID_POINTER_INDEX = 0x0008
    # B-2 16-bit guest-state fields
    GUEST_ES_SELECTOR = 0x0800
    GUEST_CS_SELECTOR = 0x0802
    GUEST_SS_SELECTOR = 0x0804
    GUEST_DS_SELECTOR = 0x0806
    GUEST_FS_SELECTOR = 0x0808
    GUEST_GS_SELECTOR = 0x080A
    GUEST_LDTR_SELECTOR = 0x080C
    GUEST_TR_SELECTOR = 0x080E
    GUEST_INTR_STATUS = 0x0810
    GUEST_PML_INDEX = 0x0812
    GUEST_UINV = 0x0814
    # B-3 16-bit host-state fields
    HOST_ES_SELECTOR = 0x0C00
    HOST_CS_SELECTOR = 0x0C02
    HOST_SS_SELECTOR = 0x0C04
    HOST_DS_SELECTOR = 0x0C06
    HOST_FS_SELECTOR = 0x0C08
    HOST_GS_SELECTOR = 0x0C0A
    HOST_TR_SELECTOR = 0x0C0C
    # B-4 64-bit control fields
    IO_BITMAP_A = 0x2000
    IO_BITMAP_B = 0x2002
    MSR_BITMAP = 0x2004
    VM_EXIT_MSR_STORE_ADDR = 0x2006
    VM_EXIT_MSR_LOAD_ADDR = 0x2008
    VM_ENTRY_MSR_LOAD_ADDR = 0x200A
    EXECUTIVE_VMCS_POINTER = 0x200C
    PML_ADDRESS = 0x200E
    TSC_OFFSET = 0x2010
    VIRTUAL_APIC_PAGE_ADDR = 0x2012
    APIC_ACCESS_ADDR = 0x2014
    POSTED_INTR_DESC_ADDR = 0x2016
    VM_FUNCTION_CONTROL = 0x2018
    EPT_POINTER = 0x201A
    EOI_EXIT_BITMAP0 = 0x201C
    EOI_EXIT_BITMAP1 = 0x201E
    EOI_EXIT_BITMAP2 = 0x2020
    EOI_EXIT_BITMAP3 = 0x2022
    EPTP_LIST_ADDRESS = 0x2024
    VMREAD_BITMAP = 0x2026
    VMWRITE_BITMAP = 0x2028
    VE_INFORMATION_ADDRESS = 0x202A
    XSS_EXIT_BITMAP = 0x202C
    ENCLS_EXITING_BITMAP = 0x202E
    SPP_TABLE_POINTER = 0x2030
    TSC_MULTIPLIER = 0x2032
    TERTIARY_VM_EXEC_CONTROL = 0x2034
    ENCLV_EXITING_BITMAP = 0x2036
    LOW_PASID_DIRECTORY_ADDRESS = 0x2038
    HIGH_PASID_DIRECTORY_ADDRESS = 0x203A
    PCONFIG_EXITING_BITMAP = 0x203E
    HLAT_POINTER = 0x2040
    PID_POINTER_TABLE = 0x2042
    SECONDARY_VM_EXIT_CONTROLS = 0x2044
    IA32_SPEC_CTRL_MASK = 0x204A
    IA32_SPEC_CTRL_SHADOW = 0x204C
    # B-5 64-bit read-only data field
    GUEST_PHYSICAL_ADDRESS = 0x2400
    # B-6 64-bit guest-state fields
    VMCS_LINK_POINTER = 0x2800
    GUEST_IA32_DEBUGCTL = 0x2802
    GUEST_IA32_PAT = 0x2804
    GUEST_IA32_EFER = 0x2806
    GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808
    GUEST_PDPTR0 = 0x280A
    GUEST_PDPTR1 = 0x280C
    GUEST_PDPTR2 = 0x280E
    GUEST_PDPTR3 = 0x2810
    GUEST_BNDCFGS = 0x2812
    GUEST_IA32_RTIT_CTL = 0x2814
    GUEST_IA32_LBR_CTL = 0x2816
    GUEST_IA32_PKRS = 0x2818
    # B-7 64-bit host-state fields
    HOST_IA32_PAT = 0x2C00
    HOST_IA32_EFER = 0x2C02
    HOST_IA32_PERF_GLOBAL_CTRL = 0x2C04
    HOST_IA32_PKRS = 0x2C06
    # B-8 32-bit control fields
    PIN_BASED_VM_EXEC_CONTROL = 0x4000
    CPU_BASED_VM_EXEC_CONTROL = 0x4002
    EXCEPTION_BITMAP = 0x4004
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008
    CR3_TARGET_COUNT = 0x400A
    VM_EXIT_CONTROLS = 0x400C
    VM_EXIT_MSR_STORE_COUNT = 0x400E
    VM_EXIT_MSR_LOAD_COUNT = 0x4010
    VM_ENTRY_CONTROLS = 0x4012
    VM_ENTRY_MSR_LOAD_COUNT = 0x4014
    VM_ENTRY_INTR_INFO_FIELD = 0x4016
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018
    VM_ENTRY_INSTRUCTION_LEN = 0x401A
    TPR_THRESHOLD = 0x401C
    SECONDARY_VM_EXEC_CONTROL = 0x401E
    PLE_GAP = 0x4020
    PLE_WINDOW = 0x4022
    NOTIFY_WINDOW = 0x4024
    # B-9 32-bit read-only data fields
    VM_INSTRUCTION_ERROR = 0x4400
    VM_EXIT_REASON = 0x4402
    VM_EXIT_INTR_INFO = 0x4404
    VM_EXIT_INTR_ERROR_CODE = 0x4406
    IDT_VECTORING_INFO_FIELD = 0x4408
    IDT_VECTORING_ERROR_CODE = 0x440A
    VM_EXIT_INSTRUCTION_LEN = 0x440C
    VMX_INSTRUCTION_INFO = 0x440E
    # B-10 32-bit guest-state fields
    GUEST_ES_LIMIT = 0x4800
    GUEST_CS_LIMIT = 0x4802
    GUEST_SS_LIMIT = 0x4804
    GUEST_DS_LIMIT = 0x4806
    GUEST_FS_LIMIT = 0x4808
    GUEST_GS_LIMIT = 0x480A
    GUEST_LDTR_LIMIT = 0x480C
    GUEST_TR_LIMIT = 0x480E
    GUEST_GDTR_LIMIT = 0x4810
    GUEST_IDTR_LIMIT = 0x4812
    GUEST_ES_AR_BYTES = 0x4814
    GUEST_CS_AR_BYTES = 0x4816
    GUEST_SS_AR_BYTES = 0x4818
    GUEST_DS_AR_BYTES = 0x481A
    GUEST_FS_AR_BYTES = 0x481C
    GUEST_GS_AR_BYTES = 0x481E
    GUEST_LDTR_AR_BYTES = 0x4820
    GUEST_TR_AR_BYTES = 0x4822
    GUEST_INTERRUPTIBILITY_INFO = 0x4824
    GUEST_ACTIVITY_STATE = 0x4826
    GUEST_SMBASE = 0x4828
    GUEST_SYSENTER_CS = 0x482A
    VMX_PREEMPTION_TIMER_VALUE = 0x482E
    # B-11 32-bit host-state field
    HOST_IA32_SYSENTER_CS = 0x4C00
    # B-12 natural-width control fields
    CR0_GUEST_HOST_MASK = 0x6000
    CR4_GUEST_HOST_MASK = 0x6002
    CR0_READ_SHADOW = 0x6004
    CR4_READ_SHADOW = 0x6006
    CR3_TARGET_VALUE0 = 0x6008
    CR3_TARGET_VALUE1 = 0x600A
    CR3_TARGET_VALUE2 = 0x600C
    CR3_TARGET_VALUE3 = 0x600E
    # B-13 natural-width read-only data fields
    EXIT_QUALIFICATION = 0x6400
    IO_RCX = 0x6402
    IO_RSI = 0x6404
    IO_RDI = 0x6406
    IO_RIP = 0x6408
    GUEST_LINEAR_ADDRESS = 0x640A
    # B-14 natural-width guest-state fields
    GUEST_CR0 = 0x6800
    GUEST_CR3 = 0x6802
    GUEST_CR4 = 0x6804
    GUEST_ES_BASE = 0x6806
    GUEST_CS_BASE = 0x6808
    GUEST_SS_BASE = 0x680A
    GUEST_DS_BASE = 0x680C
    GUEST_FS_BASE = 0x680E
    GUEST_GS_BASE = 0x6810
    GUEST_LDTR_BASE = 0x6812
    GUEST_TR_BASE = 0x6814
    GUEST_GDTR_BASE = 0x6816
    GUEST_IDTR_BASE = 0x6818
    GUEST_DR7 = 0x681A
    GUEST_RSP = 0x681C
    GUEST_RIP = 0x681E
    GUEST_RFLAGS = 0x6820
    GUEST_PENDING_DBG_EXCEPTIONS = 0x6822
    GUEST_SYSENTER_ESP = 0x6824
    GUEST_SYSENTER_EIP = 0x6826
    GUEST_S_CET = 0x6828
    GUEST_SSP = 0x682A
    GUEST_INTR_SSP_TABLE = 0x682C
    # B-15 natural-width host-state fields
    HOST_CR0 = 0x6C00
    HOST_CR3 = 0x6C02
    HOST_CR4 = 0x6C04
    HOST_FS_BASE = 0x6C06
    HOST_GS_BASE = 0x6C08
    HOST_TR_BASE = 0x6C0A
    HOST_GDTR_BASE = 0x6C0C
    HOST_IDTR_BASE = 0x6C0E
    HOST_IA32_SYSENTER_ESP = 0x6C10
    HOST_IA32_SYSENTER_EIP = 0x6C12
    HOST_RSP = 0x6C14
    HOST_RIP = 0x6C16
    HOST_S_CET = 0x6C18
    HOST_SSP = 0x6C1A
    HOST_INTR_SSP_TABLE = 0x6C1C


# Names hvsim gave because Linux's enum vmcs_field has none (styled like Linux's).
LINUX_LACKS = frozenset({
    "EPTP_INDEX", "HLAT_PREFIX_SIZE", "GUEST_UINV", "EXECUTIVE_VMCS_POINTER", "SPP_TABLE_POINTER",
    "ENCLV_EXITING_BITMAP", "LOW_PASID_DIRECTORY_ADDRESS", "HIGH_PASID_DIRECTORY_ADDRESS",
    "PCONFIG_EXITING_BITMAP", "HLAT_POINTER", "SECONDARY_VM_EXIT_CONTROLS", "IA32_SPEC_CTRL_MASK",
    "IA32_SPEC_CTRL_SHADOW", "GUEST_IA32_LBR_CTL", "GUEST_IA32_PKRS", "HOST_IA32_PKRS", "GUEST_SMBASE",
    "IO_RCX", "IO_RSI", "IO_RDI", "IO_RIP", "GUEST_S_CET", "GUEST_SSP", "GUEST_INTR_SSP_TABLE",
    "HOST_S_CET", "HOST_SSP", "HOST_INTR_SSP_TABLE",
})

# "This field exists only on processors that support the 1-setting of ..." (Appendix B notes):
# the field exists if any one of the named controls may be 1. Names are control constants in
# msrs.py; a name msrs.py does not define is a feature hvsim does not model.
REQUIRES: dict[Field, tuple[str, ...]] = {
    Field.VIRTUAL_PROCESSOR_ID: ("SECONDARY_EXEC_ENABLE_VPID",),
    Field.POSTED_INTR_NV: ("PIN_BASED_POSTED_INTR",),
    Field.EPTP_INDEX: ("SECONDARY_EXEC_EPT_VIOLATION_VE",),
    Field.HLAT_PREFIX_SIZE: ("TERTIARY_EXEC_ENABLE_HLAT",),
    Field.LAST_PID_POINTER_INDEX: ("TERTIARY_EXEC_IPI_VIRT",),
    Field.GUEST_INTR_STATUS: ("SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY",),
    Field.GUEST_PML_INDEX: ("SECONDARY_EXEC_ENABLE_PML",),
    Field.GUEST_UINV: ("VM_ENTRY_LOAD_UINV",),
    Field.MSR_BITMAP: ("CPU_BASED_USE_MSR_BITMAPS",),
    Field.PML_ADDRESS: ("SECONDARY_EXEC_ENABLE_PML",),
    Field.VIRTUAL_APIC_PAGE_ADDR: ("CPU_BASED_TPR_SHADOW",),
    Field.APIC_ACCESS_ADDR: ("SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES",),
    Field.POSTED_INTR_DESC_ADDR: ("PIN_BASED_POSTED_INTR",),
    Field.VM_FUNCTION_CONTROL: ("SECONDARY_EXEC_ENABLE_VMFUNC",),
    Field.EPT_POINTER: ("SECONDARY_EXEC_ENABLE_EPT",),
    **{f: ("SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY",) for f in (
        Field.EOI_EXIT_BITMAP0, Field.EOI_EXIT_BITMAP1, Field.EOI_EXIT_BITMAP2, Field.EOI_EXIT_BITMAP3)},
    Field.EPTP_LIST_ADDRESS: ("VMX_VMFUNC_EPTP_SWITCHING",),
    Field.VMREAD_BITMAP: ("SECONDARY_EXEC_SHADOW_VMCS",),
    Field.VMWRITE_BITMAP: ("SECONDARY_EXEC_SHADOW_VMCS",),
    Field.VE_INFORMATION_ADDRESS: ("SECONDARY_EXEC_EPT_VIOLATION_VE",),
    Field.XSS_EXIT_BITMAP: ("SECONDARY_EXEC_ENABLE_XSAVES",),
    Field.ENCLS_EXITING_BITMAP: ("SECONDARY_EXEC_ENCLS_EXITING",),
    Field.SPP_TABLE_POINTER: ("SECONDARY_EXEC_ENABLE_SPP",),
    Field.TSC_MULTIPLIER: ("SECONDARY_EXEC_TSC_SCALING",),
    Field.TERTIARY_VM_EXEC_CONTROL: ("CPU_BASED_ACTIVATE_TERTIARY_CONTROLS",),
    Field.ENCLV_EXITING_BITMAP: ("SECONDARY_EXEC_ENCLV_EXITING",),
    Field.LOW_PASID_DIRECTORY_ADDRESS: ("TERTIARY_EXEC_PASID_TRANSLATION",),
    Field.HIGH_PASID_DIRECTORY_ADDRESS: ("TERTIARY_EXEC_PASID_TRANSLATION",),
    Field.PCONFIG_EXITING_BITMAP: ("TERTIARY_EXEC_ENABLE_PCONFIG",),
    Field.HLAT_POINTER: ("TERTIARY_EXEC_ENABLE_HLAT",),
    Field.PID_POINTER_TABLE: ("TERTIARY_EXEC_IPI_VIRT",),
    Field.SECONDARY_VM_EXIT_CONTROLS: ("VM_EXIT_ACTIVATE_SECONDARY_CONTROLS",),
    Field.IA32_SPEC_CTRL_MASK: ("TERTIARY_EXEC_VIRTUALIZE_SPEC_CTRL",),
    Field.IA32_SPEC_CTRL_SHADOW: ("TERTIARY_EXEC_VIRTUALIZE_SPEC_CTRL",),
    Field.GUEST_PHYSICAL_ADDRESS: ("SECONDARY_EXEC_ENABLE_EPT",),
    Field.GUEST_IA32_PAT: ("VM_ENTRY_LOAD_IA32_PAT", "VM_EXIT_SAVE_IA32_PAT"),
    Field.GUEST_IA32_EFER: ("VM_ENTRY_LOAD_IA32_EFER", "VM_EXIT_SAVE_IA32_EFER"),
    Field.GUEST_IA32_PERF_GLOBAL_CTRL: ("VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL",),
    **{f: ("SECONDARY_EXEC_ENABLE_EPT",) for f in (
        Field.GUEST_PDPTR0, Field.GUEST_PDPTR1, Field.GUEST_PDPTR2, Field.GUEST_PDPTR3)},
    Field.GUEST_BNDCFGS: ("VM_ENTRY_LOAD_BNDCFGS", "VM_EXIT_CLEAR_BNDCFGS"),
    Field.GUEST_IA32_RTIT_CTL: ("VM_ENTRY_LOAD_IA32_RTIT_CTL", "VM_EXIT_CLEAR_IA32_RTIT_CTL"),
    Field.GUEST_IA32_LBR_CTL: ("VM_ENTRY_LOAD_IA32_LBR_CTL", "VM_EXIT_CLEAR_IA32_LBR_CTL"),
    Field.GUEST_IA32_PKRS: ("VM_ENTRY_LOAD_IA32_PKRS",),
    Field.HOST_IA32_PAT: ("VM_EXIT_LOAD_IA32_PAT",),
    Field.HOST_IA32_EFER: ("VM_EXIT_LOAD_IA32_EFER",),
    Field.HOST_IA32_PERF_GLOBAL_CTRL: ("VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL",),
    Field.HOST_IA32_PKRS: ("VM_EXIT_LOAD_IA32_PKRS",),
    Field.TPR_THRESHOLD: ("CPU_BASED_TPR_SHADOW",),
    Field.SECONDARY_VM_EXEC_CONTROL: ("CPU_BASED_ACTIVATE_SECONDARY_CONTROLS",),
    Field.PLE_GAP: ("SECONDARY_EXEC_PAUSE_LOOP_EXITING",),
    Field.PLE_WINDOW: ("SECONDARY_EXEC_PAUSE_LOOP_EXITING",),
    Field.NOTIFY_WINDOW: ("SECONDARY_EXEC_NOTIFY_VM_EXITING",),
    Field.VMX_PREEMPTION_TIMER_VALUE: ("PIN_BASED_VMX_PREEMPTION_TIMER",),
    **{f: ("VM_ENTRY_LOAD_CET_STATE",) for f in (Field.GUEST_S_CET, Field.GUEST_SSP, Field.GUEST_INTR_SSP_TABLE)},
    **{f: ("VM_EXIT_LOAD_CET_STATE",) for f in (Field.HOST_S_CET, Field.HOST_SSP, Field.HOST_INTR_SSP_TABLE)},
}


@dataclass(frozen=True, slots=True)
class Component:
    """One VMREAD/VMWRITE target: a field, or the HIGH half of a 64-bit field."""

    encoding: int
    name: str
    field: Field  # the field it reads or writes (its FULL encoding)
    width: int
    type: int
    high: bool


def _components() -> dict[int, Component]:
    table = {}
    for f in Field:
        e = Encoding.of(f)
        table[f.value] = Component(f.value, f.name, f, e.width, e.type, False)
        if e.width == WIDTH_64:
            table[f.value | 1] = Component(f.value | 1, f.name + "_HIGH", f, WIDTH_32, e.type, True)
    return table


COMPONENTS: dict[int, Component] = _components()
"""Every encoding of Appendix B, FULL and HIGH, whether or not hvsim's processor supports it."""

globals().update({c.name: c.encoding for c in COMPONENTS.values()})  # GUEST_RIP = 0x681E, ...

# For VMREAD/VMWRITE: encoding -> (FULL encoding, is HIGH, mask of the field's width)
_ACCESS = {c.encoding: (int(c.field), c.high, WIDTH_MASK[c.width]) for c in COMPONENTS.values()}
_LOW32 = 0xFFFF_FFFF


class UnsupportedComponent(KeyError):
    """No field this processor supports has that encoding (VM-instruction error 12)."""


class Vmcs:
    """The field values of one VMCS as the processor caches them (SDM 24.11.1).

    ``values`` maps each supported field's FULL encoding to its value, held in 64 bits;
    a HIGH access reads or writes bits 63:32 of the same value (SDM 24.11.2). Code that knows
    its field exists (the run loop, recording an exit) may use ``values`` directly.

    ``dirty`` is set by every :meth:`write` (VMWRITE) and cleared by a VM entry that passed
    all its checks: while it is clear, the fields hold what the last entry checked or what the
    processor itself saved at the exits since, so the next VMRESUME need not check them again
    (dirty-field tracking, as Bochs and KVM do). Code that changes a field in ``values``
    directly in a way the processor would not must set ``dirty`` itself.
    """

    __slots__ = ("_has_gpa", "address", "dirty", "launched", "shadow", "values")

    def __init__(self, address: int, supported: frozenset[int] | set[int], shadow: bool = False) -> None:
        self.address = address
        self.values: dict[int, int] = dict.fromkeys(sorted(supported), 0)
        self.launched = False  # launch state: clear / launched (SDM 24.1)
        self.shadow = shadow  # the shadow-VMCS indicator of its region (SDM 24.10)
        self._has_gpa = Field.GUEST_PHYSICAL_ADDRESS in self.values
        self.dirty = True

    def supports(self, encoding: int) -> bool:
        a = _ACCESS.get(encoding)
        return a is not None and a[0] in self.values

    def read(self, encoding: int) -> int:
        """The component's value, zero-extended to 64 bits (64-bit-mode VMREAD semantics)."""
        a = _ACCESS.get(encoding)
        if a is None or a[0] not in self.values:
            raise UnsupportedComponent(encoding)
        value = self.values[a[0]]
        return value >> 32 if a[1] else value

    def write(self, encoding: int, value: int) -> None:
        """Store ``value`` in the component: bits beyond its width are dropped; a HIGH write
        replaces bits 63:32 and keeps bits 31:0 (SDM 24.11.2, VMWRITE)."""
        a = _ACCESS.get(encoding)
        if a is None or a[0] not in self.values:
            raise UnsupportedComponent(encoding)
        full, high, mask = a
        self.dirty = True
        if high:
            self.values[full] = (self.values[full] & _LOW32) | ((value & _LOW32) << 32)
        else:
            self.values[full] = value & mask

    def record_exit(self, reason: int, qualification: int = 0, instruction_len: int = 0,
                    instruction_info: int = 0, guest_linear_address: int = 0,
                    guest_physical_address: int = 0, intr_info: int = 0, intr_error_code: int = 0,
                    idt_vectoring_info: int = 0) -> None:
        """Write the VM-exit information fields for one exit (SDM 28.2), without checks: the
        run loop's fast path. ``reason`` is the full 32-bit exit reason (basic reason in bits
        15:0, bit 31 for a failed entry); interruption and IDT-vectoring information default
        to "not valid" (bit 31 clear), as SDM 28.2.2 and 28.2.4 require when they do not apply.
        The caller saves guest state (GUEST_RIP, ...) itself."""
        v = self.values
        v[0x4402] = reason & _LOW32  # VM_EXIT_REASON
        v[0x6400] = qualification  # EXIT_QUALIFICATION
        v[0x440C] = instruction_len  # VM_EXIT_INSTRUCTION_LEN
        v[0x440E] = instruction_info  # VMX_INSTRUCTION_INFO
        v[0x640A] = guest_linear_address  # GUEST_LINEAR_ADDRESS
        v[0x4404] = intr_info  # VM_EXIT_INTR_INFO
        v[0x4406] = intr_error_code  # VM_EXIT_INTR_ERROR_CODE
        v[0x4408] = idt_vectoring_info  # IDT_VECTORING_INFO_FIELD
        if self._has_gpa:
            v[0x2400] = guest_physical_address  # GUEST_PHYSICAL_ADDRESS

    def __repr__(self) -> str:
        state = "launched" if self.launched else "clear"
        return f"<Vmcs at {self.address:#x}, {state}, {len(self.values)} fields>"


class VmcsRegion:
    """The VMCS region in memory (SDM 24.2) and hvsim's layout of the data behind the header.

    ===========  ==========================================================================
    offset       contents
    ===========  ==========================================================================
    0            bits 30:0 VMCS revision identifier, bit 31 shadow-VMCS indicator (software
                 writes these before VMPTRLD; the processor never does)
    4            VMX-abort indicator (written by the processor on a VMX abort, SDM 28.7)
    8            *hvsim*: launch state, 0 = clear, 1 = launched
    12           *hvsim*: reserved, 0
    16 + 8 * i   *hvsim*: the value of the i-th field of :class:`Field` (in Appendix B order),
                 64 bits little endian; fields the processor does not support hold 0
    ===========  ==========================================================================

    Everything from offset 8 is implementation specific: software must not read or write it
    (SDM 24.2, 24.11.1), and it holds the current values only after VMCLEAR.
    """

    REVISION, ABORT, LAUNCH_STATE, DATA = 0, 4, 8, 16
    SHADOW_INDICATOR = 1 << 31
    LAUNCHED = 1
    ORDER = tuple(int(f) for f in Field)
    SIZE = DATA + 8 * len(ORDER)  # bytes this layout uses (IA32_VMX_BASIC reports 4096)
    _DATA = struct.Struct("<" + "Q" * len(ORDER))
    _U32 = struct.Struct("<I")

    @classmethod
    def store(cls, vmcs: Vmcs, memory) -> None:
        """Write ``vmcs``'s launch state and field values to its region (VMCLEAR's write-back).
        Offsets 0-7 are left alone. Physical addresses with no memory drop the write."""
        values = vmcs.values
        data = cls._DATA.pack(*(values.get(e, 0) for e in cls.ORDER))
        head = cls._U32.pack(cls.LAUNCHED if vmcs.launched else 0) + bytes(4)
        try:
            memory.write(vmcs.address + cls.LAUNCH_STATE, head + data)
        except GuestMemoryError:
            pass

    @classmethod
    def clear_launch_state(cls, memory, address: int) -> None:
        """VMCLEAR of a VMCS that is not active: only its launch state is (re)initialised."""
        try:
            memory.write(address + cls.LAUNCH_STATE, cls._U32.pack(0))
        except GuestMemoryError:
            pass

    @classmethod
    def header(cls, memory, address: int) -> int:
        """The 32 bits at offset 0 (reads of physical addresses with no memory return all ones,
        as on real hardware)."""
        return read_u32(memory, address)

    @classmethod
    def load(cls, memory, address: int, supported: frozenset[int]) -> Vmcs:
        """A :class:`Vmcs` holding the data in the region at ``address`` (VMPTRLD's read)."""
        vmcs = Vmcs(address, supported, bool(cls.header(memory, address) & cls.SHADOW_INDICATOR))
        try:
            raw = memory.read(address + cls.LAUNCH_STATE, cls.SIZE - cls.LAUNCH_STATE)
        except GuestMemoryError:
            raw = b"\xff" * (cls.SIZE - cls.LAUNCH_STATE)
        vmcs.launched = cls._U32.unpack_from(raw, 0)[0] == cls.LAUNCHED
        for encoding, value in zip(cls.ORDER, cls._DATA.unpack_from(raw, cls.DATA - cls.LAUNCH_STATE)):
            if encoding in vmcs.values:
                vmcs.values[encoding] = value & _ACCESS[encoding][2]
        return vmcs


def read_u32(memory, address: int) -> int:
    """32 bits at a physical address; all ones where there is no memory."""
    try:
        return struct.unpack("<I", memory.read(address, 4))[0]
    except GuestMemoryError:
        return 0xFFFF_FFFF
