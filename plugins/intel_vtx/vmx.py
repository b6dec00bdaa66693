"""The VMX instructions of one logical processor in VMX root operation, written after the
pseudo-code of Intel SDM Vol. 3C ch. 31 ("VMX Instruction Reference").

Each method returns a :class:`VmxResult`: VMsucceed, VMfailInvalid or VMfailValid(n) with the
VM-instruction error number of SDM 31.4 (VMfailValid also writes it to VM_INSTRUCTION_ERROR of
the current VMCS). Where the SDM raises an exception instead (#UD, #GP(0)) the method raises
:class:`InvalidOpcode` or :class:`GeneralProtection`. The guest's own VMX instructions are VM
exits (reasons 18-27, 50, 53) handled by the run loop; nothing here runs in VMX non-root operation.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from . import entry, msrs
from .msrs import VmxCapabilities
from .vmcs import COMPONENTS, TYPE_CONTROL, TYPE_HOST, TYPE_READ_ONLY, Field, Vmcs, VmcsRegion, read_u32

# -- VM-instruction error numbers (SDM 31.4, Table 31-1); 14, 21 and 27 are reserved -------------
VMX_INSTRUCTION_ERRORS = {
    1: "VMCALL executed in VMX root operation",
    2: "VMCLEAR with invalid physical address",
    3: "VMCLEAR with VMXON pointer",
    4: "VMLAUNCH with non-clear VMCS",
    5: "VMRESUME with non-launched VMCS",
    6: "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)",
    7: "VM entry with invalid control field(s)",
    8: "VM entry with invalid host-state field(s)",
    9: "VMPTRLD with invalid physical address",
    10: "VMPTRLD with VMXON pointer",
    11: "VMPTRLD with incorrect VMCS revision identifier",
    12: "VMREAD/VMWRITE from/to unsupported VMCS component",
    13: "VMWRITE to read-only VMCS component",
    15: "VMXON executed in VMX root operation",
    16: "VM entry with invalid executive-VMCS pointer",
    17: "VM entry with non-launched executive VMCS",
    18: "VM entry with executive-VMCS pointer not VMXON pointer",
    19: "VMCALL with non-clear VMCS",
    20: "VMCALL with invalid VM-exit control fields",
    22: "VMCALL with incorrect MSEG revision identifier",
    23: "VMXOFF under dual-monitor treatment of SMIs and SMM",
    24: "VMCALL with invalid SMM-monitor features",
    25: "VM entry with invalid VM-execution control fields in executive VMCS",
    26: "VM entry with events blocked by MOV SS",
    28: "Invalid operand to INVEPT/INVVPID",
}
VMXERR_VMCALL_IN_VMX_ROOT_OPERATION = 1
VMXERR_VMCLEAR_INVALID_ADDRESS = 2
VMXERR_VMCLEAR_VMXON_POINTER = 3
VMXERR_VMLAUNCH_NONCLEAR_VMCS = 4
VMXERR_VMRESUME_NONLAUNCHED_VMCS = 5
VMXERR_VMRESUME_AFTER_VMXOFF = 6
VMXERR_ENTRY_INVALID_CONTROL_FIELD = 7
VMXERR_ENTRY_INVALID_HOST_STATE_FIELD = 8
VMXERR_VMPTRLD_INVALID_ADDRESS = 9
VMXERR_VMPTRLD_VMXON_POINTER = 10
VMXERR_VMPTRLD_INCORRECT_VMCS_REVISION_ID = 11
VMXERR_UNSUPPORTED_VMCS_COMPONENT = 12
VMXERR_VMWRITE_READ_ONLY_VMCS_COMPONENT = 13
VMXERR_VMXON_IN_VMX_ROOT_OPERATION = 15
VMXERR_ENTRY_EVENTS_BLOCKED_BY_MOV_SS = 26
VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID = 28

INVALID_POINTER = 0xFFFF_FFFF_FFFF_FFFF  # the current-VMCS pointer when there is none
EXIT_REASON_FAILED_VMENTRY = 1 << 31
VMX_EPT_EXTENT_CONTEXT, VMX_EPT_EXTENT_GLOBAL = 1, 2
VMX_VPID_EXTENT_INDIVIDUAL_ADDR, VMX_VPID_EXTENT_SINGLE_CONTEXT = 0, 1
VMX_VPID_EXTENT_ALL_CONTEXT, VMX_VPID_EXTENT_SINGLE_NON_GLOBAL = 2, 3

X86_CR0_PE = 1 << 0
X86_EFLAGS_VM = 1 << 17
EFER_LMA = 1 << 10
_ARITH_FLAGS = 0x8D5  # CF PF AF ZF SF OF
_CF, _ZF = 1 << 0, 1 << 6


class VmxFault(Exception):
    """The instruction raised an exception instead of completing (SDM ch. 31 "Protected Mode
    Exceptions")."""

    vector: int

    def __init__(self, reason: str) -> None:
        super().__init__(f"{type(self).__name__}: {reason}")
        self.reason = reason


class InvalidOpcode(VmxFault):
    vector = 6  # #UD


class GeneralProtection(VmxFault):
    vector = 13  # #GP(0)
    error_code = 0


class Status(enum.Enum):
    SUCCEED = "VMsucceed"
    FAIL_INVALID = "VMfailInvalid"
    FAIL_VALID = "VMfailValid"
    ENTERED = "VM entry"  # VMLAUNCH/VMRESUME: the guest runs
    ENTRY_FAILED = "VM-entry failure"  # guest-state or MSR loading failed: a VM exit, bit 31 set


@dataclass(frozen=True, slots=True)
class VmxResult:
    """The outcome of one VMX instruction (SDM 31.2 conventions)."""

    status: Status
    error: int = 0  # VM-instruction error number, for FAIL_VALID
    value: int | None = None  # VMREAD's and VMPTRST's destination operand
    exit_reason: int = 0  # for ENTRY_FAILED: 33 or 34 with bit 31 set

    @property
    def ok(self) -> bool:
        return self.status in (Status.SUCCEED, Status.ENTERED)

    def rflags(self, rflags: int) -> int:
        """RFLAGS after the instruction: VMsucceed clears CF PF AF ZF SF OF, VMfailInvalid then
        sets CF, VMfailValid sets ZF (SDM 31.2)."""
        rflags &= ~_ARITH_FLAGS
        if self.status is Status.FAIL_INVALID:
            return rflags | _CF
        if self.status is Status.FAIL_VALID:
            return rflags | _ZF
        return rflags

    def __repr__(self) -> str:
        if self.status is Status.FAIL_VALID:
            return f"VMfailValid({self.error}: {VMX_INSTRUCTION_ERRORS.get(self.error, 'reserved')})"
        if self.status is Status.ENTRY_FAILED:
            return f"VM-entry failure (exit reason {self.exit_reason:#x})"
        return self.status.value + ("" if self.value is None else f" -> {self.value:#x}")


VM_SUCCEED = VmxResult(Status.SUCCEED)
VM_FAIL_INVALID = VmxResult(Status.FAIL_INVALID)
VM_ENTERED = VmxResult(Status.ENTERED)


def eptp_valid(eptp: int, caps: VmxCapabilities) -> bool:
    """Is ``eptp`` an EPTP the processor supports (SDM 26.2.1.1, "enable EPT")? Used by INVEPT
    type 1 and by the VM-entry checks."""
    cap, memory_type, walk = caps.ept_vpid_cap, eptp & 7, (eptp >> 3) & 7
    types = {msrs.MEM_TYPE_UC: msrs.VMX_EPTP_UC_BIT, msrs.MEM_TYPE_WB: msrs.VMX_EPTP_WB_BIT}
    walks = {3: msrs.VMX_EPT_PAGE_WALK_4_BIT, 4: msrs.VMX_EPT_PAGE_WALK_5_BIT}  # walk length - 1
    if not cap & types.get(memory_type, 0) or not cap & walks.get(walk, 0):
        return False
    if eptp & (1 << 6) and not cap & msrs.VMX_EPT_AD_BIT:
        return False
    return not (eptp & 0xF80 or eptp >> caps.maxphyaddr)  # bits 11:7 and 63:MAXPHYADDR reserved


_CONTROL_AND_HOST_FIELDS = tuple(enc for enc, c in COMPONENTS.items() if c.type in (TYPE_CONTROL, TYPE_HOST))


class Vmx:
    """VMX operation on one logical processor: its VMX state (VMXON pointer, current VMCS,
    the active VMCSs it caches) and the host state the instructions consult.

    ``memory`` is physical memory (``HostMemory``, or anything with ``read(addr, n)`` and
    ``write(addr, data)``); VMXON and VMCS regions live there.
    """

    def __init__(self, memory, caps: VmxCapabilities | None = None) -> None:
        self.memory = memory
        self.caps = caps or VmxCapabilities()
        # The processor state the instructions check: a 64-bit kernel at CPL 0, CR4.VMXE still
        # clear (a VMM sets it before VMXON, as Linux's cpu_vmxon() does).
        self.cr0 = 0x8005_0033  # PE MP ET NE WP AM PG
        self.cr4 = 0x6A0  # PAE PGE OSFXSR OSXMMEXCPT
        self.efer = 0xD01  # SCE LME LMA NXE
        self.cs_l = True  # CS.L: 64-bit mode when EFER.LMA is set
        self.cpl = 0
        self.rflags = 0x2
        self.feature_control = msrs.FEATURE_CONTROL_LOCKED | msrs.FEATURE_CONTROL_VMXON_OUTSIDE_SMX
        self.blocked_by_mov_ss = False
        self._controls_passed: tuple | None = None  # check_vmx_controls_and_host_state's last pass
        self._controls_waived: list[str] = []
        # The VMCS whose last entry passed every check, and what else those checks read then
        # (see _clean_entry): a VMRESUME of it with nothing written since skips them.
        self._clean: Vmcs | None = None
        self._clean_inputs: tuple | None = None
        self._clean_msrs: dict[int, int] = {}
        self._clean_waived: list[str] = []
        self.entry_checked = True  # whether the last VM entry ran the checks (False: skipped them)
        # VMX state
        self.in_vmx_operation = False
        self.vmxon_pointer: int | None = None
        self.current_pointer = INVALID_POINTER
        self.current: Vmcs | None = None
        self.active: dict[int, Vmcs] = {}  # VMCSs made active by VMPTRLD, by region address
        # Why the last VMLAUNCH/VMRESUME failed its entry checks (None if it passed them), and
        # the failures of checks entry.NOT_ENFORCED lets through.
        self.last_entry_failure: str | None = None
        self.last_entry_waived: list[str] = []
        self.tlb = None  # the TLB model INVEPT / INVVPID act on: invept(type, eptp), invvpid(type, vpid, address)

    def rdmsr(self, index: int) -> int:
        """RDMSR of IA32_FEATURE_CONTROL or a VMX capability MSR; #GP where it does not exist."""
        if index == msrs.IA32_FEATURE_CONTROL:
            return self.feature_control
        if index not in self.caps.msrs:
            raise GeneralProtection(f"RDMSR of MSR {index:#x}, which this processor does not have")
        return self.caps.msrs[index]

    # -- helpers the pseudo-code names ------------------------------------------------------------
    @property
    def in_64bit_mode(self) -> bool:
        return bool(self.efer & EFER_LMA) and self.cs_l

    def _check_vmx_instruction(self) -> None:
        """The #UD and #GP(0) checks every VMX instruction but VMXON starts with."""
        if not self.in_vmx_operation:
            raise InvalidOpcode("not in VMX operation")
        self._check_mode()
        if self.cpl > 0:
            raise GeneralProtection("CPL > 0")

    def _check_mode(self) -> None:
        if not self.cr0 & X86_CR0_PE or self.rflags & X86_EFLAGS_VM:
            raise InvalidOpcode("real-address or virtual-8086 mode")
        if self.efer & EFER_LMA and not self.cs_l:
            raise InvalidOpcode("compatibility mode")

    def _bad_address(self, addr: int) -> bool:
        return bool(addr & 0xFFF or addr >> self.caps.maxphyaddr)

    def _vmfail(self, error: int) -> VmxResult:
        """VMfail(error): VMfailValid with the error recorded if there is a current VMCS,
        VMfailInvalid otherwise (SDM 31.2)."""
        if self.current is None:
            return VM_FAIL_INVALID
        self.current.values[0x4400] = error  # VM_INSTRUCTION_ERROR
        return VmxResult(Status.FAIL_VALID, error)

    def cr_values_supported(self) -> bool:
        """CR0 and CR4 against IA32_VMX_CR{0,4}_FIXED{0,1} (SDM 24.8, A.7, A.8)."""
        m = self.caps.msrs
        fixed0, fixed1 = m[msrs.IA32_VMX_CR0_FIXED0], m[msrs.IA32_VMX_CR0_FIXED1]
        cr0_ok = self.cr0 & fixed0 == fixed0 and not self.cr0 & ~fixed1 & 0xFFFF_FFFF
        fixed0, fixed1 = m[msrs.IA32_VMX_CR4_FIXED0], m[msrs.IA32_VMX_CR4_FIXED1]
        return cr0_ok and self.cr4 & fixed0 == fixed0 and not self.cr4 & ~fixed1

    # -- VMXON / VMXOFF ---------------------------------------------------------------------------
    def vmxon(self, addr: int) -> VmxResult:
        """VMXON: enter VMX operation with the VMXON region at ``addr``."""
        self._check_mode()
        if not self.cr4 & msrs.X86_CR4_VMXE:
            raise InvalidOpcode("CR4.VMXE = 0")
        if self.in_vmx_operation:
            if self.cpl > 0:
                raise GeneralProtection("CPL > 0")
            return self._vmfail(VMXERR_VMXON_IN_VMX_ROOT_OPERATION)
        if self.cpl > 0:
            raise GeneralProtection("CPL > 0")
        if not self.cr_values_supported():
            raise GeneralProtection("CR0 or CR4 not supported in VMX operation (IA32_VMX_CR*_FIXED*)")
        fc = self.feature_control
        if not fc & msrs.FEATURE_CONTROL_LOCKED or not fc & msrs.FEATURE_CONTROL_VMXON_OUTSIDE_SMX:
            raise GeneralProtection("IA32_FEATURE_CONTROL does not enable VMXON outside SMX")
        if self._bad_address(addr):
            return VM_FAIL_INVALID
        rev = read_u32(self.memory, addr)
        if rev & 0x7FFF_FFFF != self.caps.revision_id or rev >> 31:
            return VM_FAIL_INVALID
        self.current_pointer, self.current = INVALID_POINTER, None
        self.in_vmx_operation, self.vmxon_pointer = True, addr
        return VM_SUCCEED

    def vmxoff(self) -> VmxResult:
        """VMXOFF: leave VMX operation. VMCSs still active are dropped without a write-back: the
        SDM (24.11.3) asks software to VMCLEAR them first or lose their data."""
        self._check_vmx_instruction()
        self.in_vmx_operation, self.vmxon_pointer = False, None
        self.current_pointer, self.current = INVALID_POINTER, None
        self.active.clear()
        return VM_SUCCEED

    # -- VMCLEAR / VMPTRLD / VMPTRST --------------------------------------------------------------
    def vmclear(self, addr: int) -> VmxResult:
        """VMCLEAR: write the VMCS at ``addr`` back to its region, set its launch state to
        clear, make it inactive (and not current)."""
        self._check_vmx_instruction()
        if self._bad_address(addr):
            return self._vmfail(VMXERR_VMCLEAR_INVALID_ADDRESS)
        if addr == self.vmxon_pointer:
            return self._vmfail(VMXERR_VMCLEAR_VMXON_POINTER)
        vmcs = self.active.pop(addr, None)
        if vmcs is not None:
            vmcs.launched = False
            VmcsRegion.store(vmcs, self.memory)
        else:
            VmcsRegion.clear_launch_state(self.memory, addr)
        if addr == self.current_pointer:
            self.current_pointer, self.current = INVALID_POINTER, None
        return VM_SUCCEED

    def vmptrld(self, addr: int) -> VmxResult:
        """VMPTRLD: make the VMCS at ``addr`` active and current."""
        self._check_vmx_instruction()
        if self._bad_address(addr):
            return self._vmfail(VMXERR_VMPTRLD_INVALID_ADDRESS)
        if addr == self.vmxon_pointer:
            return self._vmfail(VMXERR_VMPTRLD_VMXON_POINTER)
        rev = VmcsRegion.header(self.memory, addr)
        shadowing = self.caps.allows("SECONDARY_EXEC_SHADOW_VMCS")
        if rev & 0x7FFF_FFFF != self.caps.revision_id or (rev >> 31 and not shadowing):
            return self._vmfail(VMXERR_VMPTRLD_INCORRECT_VMCS_REVISION_ID)
        vmcs = self.active.get(addr)
        if vmcs is None:
            vmcs = self.active[addr] = VmcsRegion.load(self.memory, addr, self.caps.supported_fields)
        self.current_pointer, self.current = addr, vmcs
        return VM_SUCCEED

    def vmptrst(self) -> VmxResult:
        """VMPTRST: the current-VMCS pointer (FFFFFFFF_FFFFFFFFH if none) in ``value``."""
        self._check_vmx_instruction()
        return VmxResult(Status.SUCCEED, value=self.current_pointer)

    # -- VMREAD / VMWRITE -------------------------------------------------------------------------
    def _component(self, encoding: int) -> int | None:
        if not self.in_64bit_mode:
            encoding &= 0xFFFF_FFFF  # the register operand is 32 bits outside 64-bit mode
        if encoding >> 32 or not self.current.supports(encoding):
            return None
        return encoding

    def vmread(self, encoding: int) -> VmxResult:
        """VMREAD: the component ``encoding`` of the current VMCS in ``value``; outside 64-bit
        mode only its bits 31:0 (SDM 31, VMREAD)."""
        self._check_vmx_instruction()
        if self.current is None:
            return VM_FAIL_INVALID
        enc = self._component(encoding)
        if enc is None:
            return self._vmfail(VMXERR_UNSUPPORTED_VMCS_COMPONENT)
        value = self.current.read(enc)
        return VmxResult(Status.SUCCEED, value=value if self.in_64bit_mode else value & 0xFFFF_FFFF)

    def vmwrite(self, encoding: int, value: int) -> VmxResult:
        """VMWRITE: store ``value`` in component ``encoding`` of the current VMCS. A field
        narrower than the operand keeps its low bits; a wider one has its high bits cleared."""
        self._check_vmx_instruction()
        if self.current is None:
            return VM_FAIL_INVALID
        enc = self._component(encoding)
        if enc is None:
            return self._vmfail(VMXERR_UNSUPPORTED_VMCS_COMPONENT)
        if COMPONENTS[enc].type == TYPE_READ_ONLY and not self.caps.vmwrite_any_field:
            return self._vmfail(VMXERR_VMWRITE_READ_ONLY_VMCS_COMPONENT)
        self.current.write(enc, value if self.in_64bit_mode else value & 0xFFFF_FFFF)
        return VM_SUCCEED

    # -- VMLAUNCH / VMRESUME ----------------------------------------------------------------------
    def vmlaunch(self) -> VmxResult:
        """VMLAUNCH: enter the guest of the current VMCS, whose launch state must be clear."""
        return self._vm_entry(launch=True)

    def vmresume(self) -> VmxResult:
        """VMRESUME: enter the guest of the current VMCS, whose launch state must be launched."""
        return self._vm_entry(launch=False)

    def _vm_entry(self, launch: bool) -> VmxResult:
        self._check_vmx_instruction()
        vmcs = self.current
        if vmcs is None or vmcs.shadow:  # SDM 26.1: no current VMCS, or it is a shadow VMCS
            return VM_FAIL_INVALID
        if self.blocked_by_mov_ss:
            return self._vmfail(VMXERR_ENTRY_EVENTS_BLOCKED_BY_MOV_SS)
        if launch and vmcs.launched:
            return self._vmfail(VMXERR_VMLAUNCH_NONCLEAR_VMCS)
        if not launch and not vmcs.launched:
            return self._vmfail(VMXERR_VMRESUME_NONLAUNCHED_VMCS)
        inputs = self._entry_inputs(vmcs)
        if (not vmcs.dirty and vmcs is self._clean and inputs is not None and inputs == self._clean_inputs
                and self.caps.msrs == self._clean_msrs):
            # Nothing the checks of SDM 26.2-26.4 read changed since they passed: no VMWRITE
            # since that entry, and the guest-state area holds what the processor saved at the
            # exits since (consistent by construction). They would pass again.
            self.last_entry_failure, self.last_entry_waived = None, list(self._clean_waived)
            self.entry_checked = False
            return VM_ENTERED
        self._clean, self.entry_checked = None, True
        error = self.check_vmx_controls_and_host_state(vmcs)
        if error:
            return self._vmfail(error)
        reason = self.check_and_load_guest_state(vmcs)
        if reason:
            vmcs.values[0x4402] = reason | EXIT_REASON_FAILED_VMENTRY  # VM_EXIT_REASON
            return VmxResult(Status.ENTRY_FAILED, exit_reason=reason | EXIT_REASON_FAILED_VMENTRY)
        if launch:
            vmcs.launched = True
        vmcs.dirty = False
        if inputs is not None:
            self._clean, self._clean_inputs = vmcs, inputs
            self._clean_msrs, self._clean_waived = dict(self.caps.msrs), list(self.last_entry_waived)
        return VM_ENTERED

    def _entry_inputs(self, vmcs: Vmcs) -> tuple | None:
        """What the entry checks read besides the VMCS fields and the capability MSRs: the
        processor's EFER (26.2.4), the physical-address width, the VTPR byte (26.2.1.1). None
        when they also read memory a VMM changes without VMWRITE (the VMCS link pointer's
        header, the PDPTEs CR3 points to without EPT, the VM-entry MSR-load area): such
        entries are always checked in full."""
        v = vmcs.values
        get = v.get
        if get(Field.VMCS_LINK_POINTER, entry.ALL_ONES) != entry.ALL_ONES or get(Field.VM_ENTRY_MSR_LOAD_COUNT, 0):
            return None
        proc = get(Field.CPU_BASED_VM_EXEC_CONTROL, 0)
        proc2 = get(Field.SECONDARY_VM_EXEC_CONTROL, 0) if proc & msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS else 0
        if (get(Field.GUEST_CR0, 0) & 1 << 31 and get(Field.GUEST_CR4, 0) & 1 << 5
                and not get(Field.VM_ENTRY_CONTROLS, 0) & msrs.VM_ENTRY_IA32E_MODE
                and not proc2 & msrs.SECONDARY_EXEC_ENABLE_EPT):
            return None  # PAE paging without EPT: the PDPTEs are read from memory (26.3.1.6)
        vtpr = None
        if proc & msrs.CPU_BASED_TPR_SHADOW:
            try:
                vtpr = read_u32(self.memory, get(Field.VIRTUAL_APIC_PAGE_ADDR, 0) + 0x80)
            except Exception:  # noqa: BLE001 - an unreadable page: the checks themselves report it
                return None
        return self.efer, vtpr, self.caps.maxphyaddr

    def check_vmx_controls_and_host_state(self, vmcs: Vmcs) -> int:
        """SDM 26.2: checks on the VMX controls and the host-state area (:mod:`.entry`). Return 0
        if they pass, else VMXERR_ENTRY_INVALID_CONTROL_FIELD (7) or
        VMXERR_ENTRY_INVALID_HOST_STATE_FIELD (8), the reason in ``last_entry_failure``."""
        key = self._controls_key(vmcs)
        if key == self._controls_passed:  # the same inputs passed before: they pass again
            self.last_entry_failure, self.last_entry_waived = None, list(self._controls_waived)
            return 0
        checks = entry.Entry(self, vmcs)
        error, failure = entry.check_vmx_controls_and_host_state(checks)
        self.last_entry_failure = None if failure is None else f"VMfailValid({error}): {failure}"
        self.last_entry_waived = checks.waived
        if not error:
            self._controls_passed, self._controls_waived = key, list(checks.waived)
        return error

    def _controls_key(self, vmcs: Vmcs) -> tuple:
        """Everything the checks of SDM 26.2 read: the control and host-state fields, the
        capability MSRs, the processor's EFER (26.2.4) and the VTPR byte (26.2.1.1). Equal keys
        give equal results, so the run loop's VMRESUMEs need not re-run them."""
        v = vmcs.values
        vtpr = None
        if v.get(Field.CPU_BASED_VM_EXEC_CONTROL, 0) & msrs.CPU_BASED_TPR_SHADOW:
            try:
                vtpr = read_u32(self.memory, v.get(Field.VIRTUAL_APIC_PAGE_ADDR, 0) + 0x80)
            except Exception:  # noqa: BLE001 - an unreadable page: the checks themselves report it
                vtpr = -1
        return (id(vmcs), tuple(map(v.get, _CONTROL_AND_HOST_FIELDS)), tuple(self.caps.msrs.items()),
                self.caps.maxphyaddr, self.efer, vtpr)

    def check_and_load_guest_state(self, vmcs: Vmcs) -> int:
        """SDM 26.3-26.4: check the guest state (26.3.1), then the VM-entry MSR-load area (26.4).
        Return 0 on success, else the basic exit reason of the failed entry (33 invalid guest
        state, 34 MSR loading; the caller sets bit 31) after writing EXIT_QUALIFICATION (SDM
        26.8). The launch state stays as it was. Loading the guest state into the processor is
        the run loop's (vmm.py); MSRs in the MSR-load area are checked, not loaded."""
        checks = entry.Entry(self, vmcs)
        reason, failure = entry.check_guest_state(checks)
        self.last_entry_waived += checks.waived
        if failure is not None:
            vmcs.values[0x6400] = failure.qualification  # EXIT_QUALIFICATION
            self.last_entry_failure = (f"VM-entry failure, exit reason {reason} "
                                       f"(qualification {failure.qualification}): {failure}")
        return reason

    # -- INVEPT / INVVPID -------------------------------------------------------------------------
    def invept(self, type_: int, eptp: int = 0) -> VmxResult:
        """INVEPT: check the type (IA32_VMX_EPT_VPID_CAP bit 24 + type) and, for type 1, the
        EPTP of the descriptor, then invalidate through ``tlb`` (the logical processor's TLB
        model, when one is attached: plugins/intel_vtx/vmm.py)."""
        cap = self.caps.ept_vpid_cap
        if not (self.caps.allows("SECONDARY_EXEC_ENABLE_EPT") and cap & msrs.VMX_EPT_INVEPT_BIT):
            raise InvalidOpcode("the processor does not support INVEPT")
        self._check_vmx_instruction()
        if type_ not in (VMX_EPT_EXTENT_CONTEXT, VMX_EPT_EXTENT_GLOBAL) or not cap >> (24 + type_) & 1:
            return self._vmfail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if type_ == VMX_EPT_EXTENT_CONTEXT and not eptp_valid(eptp, self.caps):
            return self._vmfail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if self.tlb is not None:
            self.tlb.invept(type_, eptp)
        return VM_SUCCEED

    def invvpid(self, type_: int, vpid: int = 0, linear_address: int = 0) -> VmxResult:
        """INVVPID: check the type (IA32_VMX_EPT_VPID_CAP bit 40 + type) and the descriptor:
        ``vpid`` is its bits 63:0 (VPID in 15:0, 63:16 must be 0; the VPID must not be 0 for
        types 0, 1, 3), ``linear_address`` its bits 127:64 (canonical for type 0)."""
        cap = self.caps.ept_vpid_cap
        if not (self.caps.allows("SECONDARY_EXEC_ENABLE_VPID") and cap & msrs.VMX_VPID_INVVPID_BIT):
            raise InvalidOpcode("the processor does not support INVVPID")
        self._check_vmx_instruction()
        if not 0 <= type_ <= 3 or not cap >> (40 + type_) & 1:
            return self._vmfail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if vpid >> 16:  # descriptor bits 63:16 are reserved
            return self._vmfail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if type_ != VMX_VPID_EXTENT_ALL_CONTEXT and vpid == 0:
            return self._vmfail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if type_ == VMX_VPID_EXTENT_INDIVIDUAL_ADDR and not _canonical(linear_address):
            return self._vmfail(VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID)
        if self.tlb is not None:
            self.tlb.invvpid(type_, vpid & 0xFFFF, linear_address)
        return VM_SUCCEED

    def invvpid_descriptor(self, type_: int, descriptor: bytes) -> VmxResult:
        """INVVPID with its 128-bit in-memory descriptor (VPID in bits 15:0, address in 127:64)."""
        low, address = struct.unpack("<QQ", descriptor)
        return self.invvpid(type_, low, address)


def _canonical(address: int, width: int = 57) -> bool:  # the CPU's linear-address width (5-level paging)
    top = address >> (width - 1)
    return top == 0 or top == (1 << (64 - width + 1)) - 1
