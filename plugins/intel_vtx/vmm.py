"""The hypervisor side of one Intel VT-x vCPU: VMXON, a VMCS made current, and the VM entry /
VM exit the run loop performs around every stay in the guest.

hvsim acts as the VMM, the way KVM's vmx.c does, through the VMX instruction API of
:mod:`.vmx`: VMXON with a VMXON region, VMCLEAR and VMPTRLD of the vCPU's VMCS, VMWRITEs of the
controls (each control field as ``(wanted | allowed-0) & allowed-1`` of the capability MSRs),
the host state and the guest state, then VMLAUNCH, and VMRESUME for every later entry. Every
exit writes its exit reason, qualification, instruction length and addresses into the VMCS
(SDM 28.2); leaving the engine saves the guest-state area (SDM 28.3); an entry loads
GUEST_RIP, GUEST_RSP and GUEST_RFLAGS where a VMM plugin changed them with VMWRITE.

Events (SDM 25.2, 25.5, 26.6, 26.7): the pin-based and processor-based event controls become an
``EventControls`` at every entry for plugins/x86/events.py, which takes each pending event at
its exact boundary; the guest interruptibility and activity states are saved on exit and loaded
on entry, the VMX-preemption timer counts the guest's TSC, EFER and PAT follow their load/save
controls.
"""

from __future__ import annotations

import operator
import types

from unicorn import x86_const as X

from hvsim.core.mmu import Stage2Fault
from hvsim.plugins.x86 import paging
from hvsim.plugins.x86.traps import ON_DEMAND
from hvsim.plugins.x86.events import EventControls
from hvsim.plugins.x86.tsc import guest_tsc_hz
from hvsim.plugins.x86.regs import StateBatch

from . import msrs
from .entry import GUEST_SEGMENT_FIELDS, GUEST_TABLE_FIELDS
from .apicv import VirtualApic
from .ept import Ept, ep4ta
from .exits import VmxExitInfo, VmxVendor
from .vmcs import Field
from .vmx import Status, Vmx

# The fields as plain ints: an IntEnum member costs ~80 ns a look-up, a namespace's ~25 ns, and
# an exit's save and re-entry name about forty of them.
_F = types.SimpleNamespace(**{member.name: int(member) for member in Field})

VMXON_OFFSET, VMCS_OFFSET, MSR_BITMAP_OFFSET, IO_BITMAP_A_OFFSET, IO_BITMAP_B_OFFSET, VIRTUAL_APIC_OFFSET = (
    0x0000, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000)
APIC_ACCESS_OFFSET, POSTED_DESC_OFFSET = 0x6000, 0x7000  # an APIC-access page, a posted-interrupt descriptor
VTPR = 0x80  # the virtual TPR in the virtual-APIC page (SDM 30.1.1)
CR0_TS, CR0_PE_MP_EM_TS = 1 << 3, 0xF
_DESCRIPTOR_TABLE = frozenset({"sgdt", "sidt", "lgdt", "lidt", "sldt", "str", "lldt", "ltr"})
HOST_RIP = 0xFFFF_FFFF_8100_0000  # where the host's VM-exit handler would be: hvsim's Python
HOST_RSP = 0xFFFF_FFFF_8100_8000

_WANTED = {
    msrs.PROC: (msrs.CPU_BASED_HLT_EXITING | msrs.CPU_BASED_UNCOND_IO_EXITING | msrs.CPU_BASED_USE_MSR_BITMAPS
                | msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS),
    # KVM's configuration: EPT with unrestricted guest, so the guest may run with paging off
    # (Multiboot) or in any mode it switches to; VPID tags its translations.
    msrs.PROC2: msrs.SECONDARY_EXEC_ENABLE_EPT | msrs.SECONDARY_EXEC_UNRESTRICTED_GUEST | msrs.SECONDARY_EXEC_ENABLE_VPID,
    msrs.EXIT: msrs.VM_EXIT_HOST_ADDR_SPACE_SIZE | msrs.VM_EXIT_SAVE_IA32_EFER | msrs.VM_EXIT_LOAD_IA32_EFER,
    msrs.ENTRY: msrs.VM_ENTRY_LOAD_IA32_EFER,
}
_CONTROL_FIELD = {msrs.PIN: _F.PIN_BASED_VM_EXEC_CONTROL, msrs.PROC: _F.CPU_BASED_VM_EXEC_CONTROL,
                  msrs.PROC2: _F.SECONDARY_VM_EXEC_CONTROL,
                  msrs.EXIT: _F.VM_EXIT_CONTROLS, msrs.ENTRY: _F.VM_ENTRY_CONTROLS}
_SEGMENTS = (("ES", X.UC_X86_REG_ES), ("CS", X.UC_X86_REG_CS), ("SS", X.UC_X86_REG_SS),
             ("DS", X.UC_X86_REG_DS), ("FS", X.UC_X86_REG_FS), ("GS", X.UC_X86_REG_GS))
_CR_FIELDS = operator.itemgetter(_F.GUEST_CR0, _F.CR0_READ_SHADOW, _F.CR0_GUEST_HOST_MASK,
                                 _F.GUEST_CR4, _F.CR4_READ_SHADOW, _F.CR4_GUEST_HOST_MASK)
_SAVED_REGS = (X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_CR0, X.UC_X86_REG_CR3,
               X.UC_X86_REG_CR4, X.UC_X86_REG_DR7, *(reg for _name, reg in _SEGMENTS))
_SAVED_MMRS = (X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_TR)
_LOADED_ON_ENTRY = ((_F.GUEST_RIP, X.UC_X86_REG_RIP), (_F.GUEST_RSP, X.UC_X86_REG_RSP),
                    (_F.GUEST_RFLAGS, X.UC_X86_REG_RFLAGS), (_F.GUEST_CR3, X.UC_X86_REG_CR3))
AR_UNUSABLE = 1 << 16
IA32_XSS = 0xDA0
_GPR_IDS = [getattr(X, f"UC_X86_REG_{n}") for n in ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
                                                     "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")]
TR_RESET = (0, 0, 0xFFFF, 0x8B)  # selector, base, limit, AR: a busy 32-bit TSS, TR after RESET
# Bits of CR0 / CR4 the VMM owns (CR0_GUEST_HOST_MASK, CR4_GUEST_HOST_MASK): VMX needs NE and
# VMXE set while the guest may want them clear; its reads see the read shadows (SDM 25.3).
CR0_OWNED, CR4_OWNED = msrs.X86_CR0_NE, msrs.X86_CR4_VMXE
# EPT entries (SDM 29.3.2): read, write, execute; memory type WB in bits 5:3 of a leaf; PS.
EPT_RWX, EPT_WB, EPT_PS = 0x7, 6 << 3, 1 << 7
EPTP_WB_4LEVEL = 6 | (4 - 1) << 3
# VM-entry interruption-information field (SDM 24.8.3, Table 24-16)
INTR_INFO_VALID, INTR_INFO_DELIVER_CODE = 1 << 31, 1 << 11
INTR_TYPE_SOFT_INTR, INTR_TYPE_PRIV_SW_EXCEPTION, INTR_TYPE_SOFT_EXCEPTION = 4, 5, 6
INTR_TYPE_OTHER_EVENT = 7  # with vector 0: a pending MTF VM exit (SDM 26.6.2)
GUEST_ACTIVITY_ACTIVE, GUEST_ACTIVITY_HLT = 0, 1
MSR_IA32_PAT, MSR_EFER = 0x277, 0xC000_0080


class VmxGuestContext:
    """One vCPU's VMXON region, VMCS and MSR bitmap in host memory, outside every guest."""

    # SDM 26.1.3: MOV-DR exits come before #GP for CPL > 0 and #UD for DR4/DR5 with CR4.DE
    exits_before_faults = frozenset({"mov_to_dr", "mov_from_dr"})

    def __init__(self, vcpu, area: int) -> None:
        self.vcpu = vcpu
        host = vcpu.vm.host
        self.vmx = vmx = Vmx(host)
        caps = vmx.caps
        for offset in (VMXON_OFFSET, VMCS_OFFSET):
            host.write(area + offset, caps.revision_id.to_bytes(4, "little") + bytes(4))
        self.msr_bitmap = area + MSR_BITMAP_OFFSET
        host.write(self.msr_bitmap, bytes(4096))
        for msr in vcpu.msrs:  # read-low bitmap at 0x000, write-low at 0x800 (SDM 25.6.9)
            for base in (0x000, 0x800):
                at = self.msr_bitmap + base + msr // 8
                host.write(at, bytes([host.read(at, 1)[0] | 1 << (msr % 8)]))
        vmx.cr4 |= msrs.X86_CR4_VMXE
        for step, result in (("VMXON", vmx.vmxon(area + VMXON_OFFSET)),
                             ("VMCLEAR", vmx.vmclear(area + VMCS_OFFSET)),
                             ("VMPTRLD", vmx.vmptrld(area + VMCS_OFFSET))):
            if not result.ok:
                raise RuntimeError(f"{step} failed: {result}")
        self.vmcs = vmx.current
        wanted = dict(_WANTED)
        self.cr0_owned = CR0_OWNED
        shadow = vcpu.vm.arch.paging == "shadow"
        if shadow:  # KVM without EPT: the VMM's shadow page tables, fed by #PF, CR3 and INVLPG exits
            wanted[msrs.PROC] |= msrs.CPU_BASED_CR3_LOAD_EXITING | msrs.CPU_BASED_INVLPG_EXITING
            wanted[msrs.PROC2] &= ~(msrs.SECONDARY_EXEC_ENABLE_EPT | msrs.SECONDARY_EXEC_UNRESTRICTED_GUEST)
            # Without unrestricted guest the processor runs the guest with PE and PG set; the VMM
            # owns them, and the guest reads its own values from the CR0 read shadow (SDM 25.3).
            self.cr0_owned |= msrs.X86_CR0_PE | msrs.X86_CR0_PG
        for control, field in _CONTROL_FIELD.items():
            self._vmwrite(field, (wanted.get(control, 0) | caps.allowed0[control]) & caps.allowed1[control])
        self._vmwrite(_F.MSR_BITMAP, self.msr_bitmap)
        self._vmwrite(_F.EPT_POINTER, vcpu.vm.arch.ept_root(self.build_identity_ept) | EPTP_WB_4LEVEL)
        self._vmwrite(_F.VIRTUAL_PROCESSOR_ID, 1 + vcpu.index)
        self._vmwrite(_F.CR0_GUEST_HOST_MASK, self.cr0_owned)
        if shadow:
            from hvsim.plugins.x86.shadow import ShadowMmu

            self._vmwrite(_F.EXCEPTION_BITMAP, 1 << 14)
            vcpu.mmu.shadow = ShadowMmu(vcpu, *vcpu.vm.arch.shadow_pool(vcpu.index))
        self._vmwrite(_F.CR4_GUEST_HOST_MASK, CR4_OWNED)
        # I/O bitmaps with every port set: used when a VMM switches "use I/O bitmaps" on.
        for offset, field in ((IO_BITMAP_A_OFFSET, _F.IO_BITMAP_A), (IO_BITMAP_B_OFFSET, _F.IO_BITMAP_B)):
            host.write(area + offset, b"\xff" * 4096)
            self._vmwrite(field, area + offset)
        # A virtual-APIC page, as KVM gives every vCPU: used when a VMM sets "use TPR shadow".
        host.write(area + VIRTUAL_APIC_OFFSET, bytes(4096))
        self._vmwrite(_F.VIRTUAL_APIC_PAGE_ADDR, area + VIRTUAL_APIC_OFFSET)
        self.tpr = 0  # the local APIC's TPR that MOV CR8 reaches without a TPR shadow (bits 7:4)
        self._vmwrite(_F.VMCS_LINK_POINTER, (1 << 64) - 1)
        self._host_state()
        self._values = self.vmcs.values
        self._last: VmxExitInfo | None = None
        self._saved: dict[int, int] = {}
        self.io_check = None  # set at each entry from the I/O controls (SDM 25.1.3)
        self.hlt_exits, self.cpuid_exits = True, True  # CPUID always exits in VMX non-root
        self.msr_check = None
        self.exception_check = None
        self._exiting: dict[str, bool] = {}
        self._exiting_by_controls: dict[tuple[int, int], dict[str, bool]] = {}
        self._cr3_load = self._cr3_store = False
        self._proc = self._proc2 = 0
        self._cr_saved: tuple = ()
        self._controls_from = None  # the VMCS whose controls _configure last read
        self._batch = None  # the registers save_guest_state reads in one call
        self._segment_fields: dict[tuple, dict[int, int]] = {}
        self._epts: dict[int, Ept] = {}  # by EPTP: each keeps its guest-physical mappings
        self.vmx.tlb = self  # INVEPT / INVVPID reach this logical processor's TLB model
        self.event_controls = EventControls()
        self._timer_start: float | None = None
        self.apic = VirtualApic(self)  # the processor's APIC virtualization (SDM ch. 30, apicv.py)
        self._area = area
        self._memory_virtualization(self._values[_F.SECONDARY_VM_EXEC_CONTROL])

    def _vmwrite(self, field: int, value: int) -> None:
        result = self.vmx.vmwrite(field, value)
        if not result.ok:
            raise RuntimeError(f"VMWRITE {Field(field).name} failed: {result}")

    @staticmethod
    def build_identity_ept(vm, base: int) -> int:
        """EPT paging structures at host-physical ``base`` mapping every RAM slot of ``vm``
        (guest-physical -> its host-physical backing) with 2 MiB pages, write-back; MMIO stays
        unmapped, so a device access is an EPT violation, as under KVM. Returns the PML4."""
        return vm.arch.identity_stage2(vm, base, EPT_RWX, EPT_RWX | EPT_WB | EPT_PS)

    def _host_state(self) -> None:
        """A 64-bit host, as KVM's: the state VM exits return to (SDM 25.5)."""
        w = self._vmwrite
        w(_F.HOST_CR0, 0x8005_0033)
        w(_F.HOST_CR4, 0x26A0)
        w(_F.HOST_CR3, 0x1000)
        w(_F.HOST_IA32_EFER, 0xD01)
        w(_F.HOST_CS_SELECTOR, 0x10)
        for name in ("SS", "DS", "ES", "FS", "GS"):
            w(getattr(Field, f"HOST_{name}_SELECTOR"), 0x18)
        w(_F.HOST_TR_SELECTOR, 0x40)
        w(_F.HOST_RIP, HOST_RIP)
        w(_F.HOST_RSP, HOST_RSP)

    # -- every exit -------------------------------------------------------------------------
    def record(self, raw: VmxExitInfo) -> None:
        """The VM-exit information fields (SDM 28.2) and the guest RIP of this exit. Records are
        shared per instruction, so an exit from the same place as the last one is already there."""
        if raw is self._last:
            return
        self._last = raw
        self.vmcs.record_exit(raw.EXIT_REASON, raw.EXIT_QUALIFICATION, raw.VM_EXIT_INSTRUCTION_LEN,
                              raw.VMX_INSTRUCTION_INFO,
                              raw.GUEST_LINEAR_ADDRESS or 0, raw.GUEST_PHYSICAL_ADDRESS or 0,
                              raw.VM_EXIT_INTR_INFO, raw.VM_EXIT_INTR_ERROR_CODE, raw.IDT_VECTORING_INFO_FIELD)
        if raw.IDT_VECTORING_INFO_FIELD:
            self._values[_F.IDT_VECTORING_ERROR_CODE] = raw.IDT_VECTORING_ERROR_CODE
        if raw.GUEST_RIP is not None:
            # The exit names its instruction; the engine has already completed it, as the VMM's
            # handler would (KVM's skip_emulated_instruction), so it is not to be loaded back.
            self._values[_F.GUEST_RIP] = self._saved[_F.GUEST_RIP] = raw.GUEST_RIP

    # -- around each stay in the engine -----------------------------------------------------
    def vmrun(self) -> str | None:
        """VMLAUNCH (first entry) or VMRESUME; returns why the entry failed, or None."""
        vmx, vmcs = self.vmx, self.vmcs
        if not self._saved:
            self.save_guest_state()  # the VMM's initial guest state: what the loader set up
        lma = self.vcpu.efer() & paging.EFER_LMA
        entry = self._values[_F.VM_ENTRY_CONTROLS]
        wanted = entry | msrs.VM_ENTRY_IA32E_MODE if lma else entry & ~msrs.VM_ENTRY_IA32E_MODE
        if wanted != entry:  # the VMM's VMWRITE of the entry controls, as KVM's on an EFER change
            self._values[_F.VM_ENTRY_CONTROLS] = wanted
            vmcs.dirty = True
        result = vmx.vmresume() if vmcs.launched else vmx.vmlaunch()
        self._last = None
        if result.status is not Status.ENTERED:
            return f"VM entry failed: {vmx.last_entry_failure or result}"
        if vmx.entry_checked or self._controls_from is not vmcs:
            self._configure(vmcs)  # the VMM wrote the VMCS: what the controls determine, anew
        proc, proc2, pin = self._proc, self._proc2, self._values[_F.PIN_BASED_VM_EXEC_CONTROL]
        self._start_preemption_timer(pin)
        self._load_guest_view_of_cr0_cr4()
        self._memory_virtualization(proc2)
        self.apic.configure(pin, proc, proc2)
        self.event_controls.virtual_apic = self.apic if self.apic.vid else None
        self.resume_state()
        return None

    def _configure(self, vmcs) -> None:
        """What the VM-execution controls determine (which instructions exit, the I/O, MSR and
        exception bitmap checks, the event controls, the traps the engine must set): computed
        at an entry that checked the VMCS (a VMWRITE since the last one), kept across the
        VMRESUMEs that follow with the VMCS untouched."""
        self._controls_from = vmcs
        self.io_check = self._io_controls()
        proc = self._values[_F.CPU_BASED_VM_EXEC_CONTROL]
        self.hlt_exits = bool(proc & msrs.CPU_BASED_HLT_EXITING)
        self.msr_check = self._msr_bitmap_check() if proc & msrs.CPU_BASED_USE_MSR_BITMAPS else None
        self.exception_check = self._exception_bitmap_check()
        proc2 = self._values.get(_F.SECONDARY_VM_EXEC_CONTROL, 0) if proc & msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS else 0
        exiting = self._exiting_by_controls.get((proc, proc2))
        if exiting is None:
            exiting = self._exiting_by_controls[(proc, proc2)] = _exiting(proc, proc2)
        self._exiting = exiting
        self._proc, self._proc2 = proc, proc2
        mask = self._values.get(_F.CR0_GUEST_HOST_MASK, 0)
        self.vcpu.want_traps(frozenset(k for k, on in self._exiting.items() if on and k in ON_DEMAND)
                             | (frozenset({"clts", "lmsw"}) if mask & CR0_PE_MP_EM_TS else frozenset()))
        pin = self._values[_F.PIN_BASED_VM_EXEC_CONTROL]
        self.event_controls = EventControls(
            intr_exits=bool(pin & msrs.PIN_BASED_EXT_INTR_MASK), intr_exit_ignores_if=True,
            nmi_exits=bool(pin & msrs.PIN_BASED_NMI_EXITING), virtual_nmis=bool(pin & msrs.PIN_BASED_VIRTUAL_NMIS),
            init_exits=True,  # INIT signals always exit in VMX non-root operation (SDM 25.2)
            intr_window=bool(proc & msrs.CPU_BASED_INTR_WINDOW_EXITING),
            nmi_window=bool(proc & msrs.CPU_BASED_NMI_WINDOW_EXITING),
            mtf=bool(proc & msrs.CPU_BASED_MONITOR_TRAP_FLAG))
        self._cr3_load, self._cr3_store = (bool(proc & msrs.CPU_BASED_CR3_LOAD_EXITING),
                                           bool(proc & msrs.CPU_BASED_CR3_STORE_EXITING))

    def _memory_virtualization(self, proc2: int) -> None:
        """EPT and VPID as the controls say (SDM 29.3, 29.1): the MMU walks the EPT the EPTP
        names and tags its TLB entries with (VPID, EP4TA). Without VPID, every VM entry drops
        the translations tagged with VPID 0000H (SDM 29.4.3.3); without EPT, guest-physical
        addresses are host-physical, and a VMM must supply shadow page tables."""
        mmu, v = self.vcpu.mmu, self._values
        vpid = v.get(_F.VIRTUAL_PROCESSOR_ID, 0) if proc2 & msrs.SECONDARY_EXEC_ENABLE_VPID else 0
        if proc2 & msrs.SECONDARY_EXEC_ENABLE_EPT:
            eptp = v[_F.EPT_POINTER]
            ept = self._epts.get(eptp)
            if ept is None:
                ept = self._epts[eptp] = Ept(self.vcpu.vm.host, eptp, self.vmx.caps.ept_vpid_cap,
                                             self.vmx.caps.maxphyaddr)
            mmu.stage2, mmu.tag = ept, (vpid, ept.root)
            ept.pml = self._pml if proc2 & msrs.SECONDARY_EXEC_ENABLE_PML and ept.ad else None
        else:
            mmu.stage2, mmu.tag = None, (vpid, None)
        if vpid == 0:
            mmu.tlb.invalidate(match=lambda tag: tag[0] == 0)

    def _pml(self, gpa: int, dirtied: bool) -> None:
        """Page-modification logging (SDM 29.3.6): before the processor sets an accessed or
        dirty flag for EPT, a PML index outside 0-511 is a page-modification-log-full event (a VM
        exit; no flag is set, the access does not happen). When it sets a dirty flag, the page's
        guest-physical address goes to PML_ADDRESS + 8 * index and the index decrements."""
        v = self._values
        index = v.get(_F.GUEST_PML_INDEX, 0)
        if index > 511:
            raise Stage2Fault(gpa, f"page-modification log full: PML index {index} is outside 0-511",
                              write=dirtied, pml_full=True)
        if dirtied:
            self.vcpu.vm.host.write(v[_F.PML_ADDRESS] + 8 * index, (gpa & ~0xFFF).to_bytes(8, "little"))
            v[_F.GUEST_PML_INDEX] = (index - 1) & 0xFFFF

    # -- INVEPT / INVVPID reach the TLB model (SDM 29.4.3.1) ------------------------------------
    def invept(self, type_: int, eptp: int) -> None:
        """Type 1 (single-context) drops guest-physical and combined mappings of one EP4TA;
        type 2 (global) those of every EP4TA."""
        root = ep4ta(eptp, self.vmx.caps.maxphyaddr) if type_ == 1 else None
        for ept in self._epts.values():
            if root is None or ept.root == root:
                ept.cache.clear()
        self.vcpu.mmu.tlb.invalidate(match=lambda tag: tag[1] is not None and (root is None or tag[1] == root))

    def invvpid(self, type_: int, vpid: int, address: int) -> None:
        """0 individual-address, 1 single-context, 2 all-contexts (every VPID but 0000H),
        3 single-context retaining globals: linear and combined mappings."""
        tlb = self.vcpu.mmu.tlb
        if type_ == 0:
            tlb.invalidate(match=lambda tag: tag[0] == vpid, address=address)
        elif type_ == 1:
            tlb.invalidate(match=lambda tag: tag[0] == vpid)
        elif type_ == 2:
            tlb.invalidate(match=lambda tag: tag[0] != 0)
        else:
            tlb.invalidate(match=lambda tag: tag[0] == vpid, keep_global=True)

    def resume_state(self) -> None:
        """The guest state the VMM changed with VMWRITE since the exit, then event injection."""
        regs, values, saved = self.vcpu.regs, self._values, self._saved
        for field, reg in _LOADED_ON_ENTRY:
            if values[field] != saved[field]:
                regs.write(reg, values[field])
        self._load_event_state()
        self._inject()

    def _load_event_state(self) -> None:
        """Interruptibility and activity state (SDM 26.3.2.5, 26.6.1), EFER and PAT with their
        VM-entry controls (26.3.2.1), where the VMM changed them since the exit."""
        vcpu, v, saved = self.vcpu, self._values, self._saved
        intr = v.get(_F.GUEST_INTERRUPTIBILITY_INFO, 0)
        if intr != saved.get(_F.GUEST_INTERRUPTIBILITY_INFO, 0):
            vcpu.set_interruptibility(intr)
        activity = v.get(_F.GUEST_ACTIVITY_STATE, 0)
        if activity != saved.get(_F.GUEST_ACTIVITY_STATE, 0):
            vcpu.activity_hlt = activity == GUEST_ACTIVITY_HLT
        # The load controls load the field at every entry (a stale field overwrites what the
        # guest wrote since); the engine's register is written only when it differs.
        entry = v[_F.VM_ENTRY_CONTROLS]
        if not entry & (msrs.VM_ENTRY_LOAD_IA32_EFER | msrs.VM_ENTRY_LOAD_IA32_PAT):
            return
        uc = vcpu.uc
        for control, field, msr in ((msrs.VM_ENTRY_LOAD_IA32_EFER, _F.GUEST_IA32_EFER, MSR_EFER),
                                    (msrs.VM_ENTRY_LOAD_IA32_PAT, _F.GUEST_IA32_PAT, MSR_IA32_PAT)):
            if entry & control and v.get(field, 0) != vcpu.regs.msr(msr):
                uc.reg_write(X.UC_X86_REG_MSR, (msr, v.get(field, 0)))

    # -- events (SDM 25.2, 26.7) -------------------------------------------------------------
    def event_exit(self, kind: str, vector: int = 0):
        ack = bool(self._values[_F.VM_EXIT_CONTROLS] & msrs.VM_EXIT_ACK_INTR_ON_EXIT)
        if kind == "preemption_timer":
            self._values[_F.VMX_PREEMPTION_TIMER_VALUE] = 0
            self.vcpu.timer_deadline = None
        return VmxVendor.event_exit(kind, vector, acknowledged=ack)

    def window_exit(self, kind: str):
        return VmxVendor.window_exit(kind)

    def _start_preemption_timer(self, pin: int) -> None:
        """The VMX-preemption timer (SDM 25.5.1) counts down from its VMCS field once per
        2^IA32_VMX_MISC[4:0] ticks of the TSC while the guest runs; at 0 it exits (reason 52),
        before any instruction if it is 0 at entry."""
        vcpu = self.vcpu
        if not pin & msrs.PIN_BASED_VMX_PREEMPTION_TIMER:
            vcpu.timer_deadline = self._timer_start = None
            return
        ticks = self._values.get(_F.VMX_PREEMPTION_TIMER_VALUE, 0) << (self.vmx.caps.misc & msrs.VMX_MISC_PREEMPTION_TIMER_RATE_MASK)
        hz = guest_tsc_hz(vcpu.clock)  # first: measuring the host's rate takes ~20 ms, once
        self._timer_start = now = vcpu.clock.now()
        vcpu.timer_deadline = now + ticks / hz

    def _save_preemption_timer(self) -> None:
        vcpu, v = self.vcpu, self._values
        if self._timer_start is None or vcpu.timer_deadline is None:
            return
        if v[_F.VM_EXIT_CONTROLS] & msrs.VM_EXIT_SAVE_VMX_PREEMPTION_TIMER:
            left = max(0.0, vcpu.timer_deadline - vcpu.clock.now()) * guest_tsc_hz(vcpu.clock)
            v[_F.VMX_PREEMPTION_TIMER_VALUE] = int(left) >> (self.vmx.caps.misc & msrs.VMX_MISC_PREEMPTION_TIMER_RATE_MASK)

    def _inject(self) -> None:
        """Event injection (SDM 27.6): the VM-entry interruption-information field, if valid, is
        delivered through the guest's IDT as the guest starts; the valid bit is then clear, as
        every VM exit leaves it (SDM 28.2.1)."""
        v = self._values
        info = v.get(_F.VM_ENTRY_INTR_INFO_FIELD, 0)
        if not info & INTR_INFO_VALID:
            return
        v[_F.VM_ENTRY_INTR_INFO_FIELD] = info & ~INTR_INFO_VALID
        vcpu, kind = self.vcpu, (info >> 8) & 7
        mtf = bool(v[_F.CPU_BASED_VM_EXEC_CONTROL] & msrs.CPU_BASED_MONITOR_TRAP_FLAG)
        if kind == INTR_TYPE_OTHER_EVENT:  # injecting a pending MTF VM exit (SDM 26.6.2)
            vcpu.mtf_pending = True
            return
        error = v.get(_F.VM_ENTRY_EXCEPTION_ERROR_CODE, 0) if info & INTR_INFO_DELIVER_CODE else None
        rip, length = vcpu.rip(), 0
        if kind in (INTR_TYPE_SOFT_INTR, INTR_TYPE_PRIV_SW_EXCEPTION, INTR_TYPE_SOFT_EXCEPTION):
            length = v.get(_F.VM_ENTRY_INSTRUCTION_LEN, 0)
            rip += length  # software events return past the INT
        vcpu.activity_hlt = False  # an injected event wakes the guest (SDM 26.6.2)
        vcpu.deliver_event(info & 0xFF, error, rip, software=kind in (INTR_TYPE_SOFT_INTR, INTR_TYPE_SOFT_EXCEPTION),
                           event_type=kind, length=length)
        if mtf:  # MTF exit pending before the handler's first instruction (SDM 26.7.2)
            vcpu.mtf_pending = True

    def intercepts(self, kind: str, info) -> bool:
        """Whether this sensitive instruction exits under the current controls (SDM 25.1)."""
        if kind in ("clts", "lmsw"):
            return self._cr0_access_exits(kind, info)
        if kind in ("xsaves", "xrstors"):
            return self._xss_exits()
        if kind not in ("mov_to_cr", "mov_from_cr"):
            return self._exiting.get(kind, False)
        cr, gpr = info
        v = self._values
        if cr == 8:  # SDM 26.1.3: CR8-load / CR8-store exiting
            return bool(self._proc & (msrs.CPU_BASED_CR8_LOAD_EXITING if kind == "mov_to_cr"
                                      else msrs.CPU_BASED_CR8_STORE_EXITING))
        if cr == 3:
            if kind == "mov_from_cr":
                return self._cr3_store
            if not self._cr3_load:
                return False
            value = self.vcpu.regs.read(_GPR_IDS[gpr])
            count = v.get(_F.CR3_TARGET_COUNT, 0)
            targets = [v.get(_F.CR3_TARGET_VALUE0 + 2 * i, 0) for i in range(min(count, 4))]
            return value not in targets  # a CR3-target value loads without an exit
        if kind == "mov_to_cr" and cr in (0, 4):
            # Exits if a bit the VMM owns (guest/host mask) would differ from its read shadow.
            # The read shadow's owned bits are what the engine holds (the guest's view).
            mask = v.get(_F.CR0_GUEST_HOST_MASK if cr == 0 else _F.CR4_GUEST_HOST_MASK, 0)
            shadow = self.vcpu.regs.read(X.UC_X86_REG_CR0 if cr == 0 else X.UC_X86_REG_CR4)
            return bool((self.vcpu.regs.read(_GPR_IDS[gpr]) ^ shadow) & mask)
        return False  # MOV from CR0/CR4 reads the shadow (the engine holds the guest's view)

    def _cr0_access_exits(self, kind: str, info) -> bool:
        """SDM 26.1.3: CLTS exits if TS is owned (CR0 guest/host mask) and set in the read
        shadow; LMSW exits if it would set an owned PE the shadow has clear, or would make an
        owned MP/EM/TS differ from the shadow."""
        mask, shadow = self._values.get(_F.CR0_GUEST_HOST_MASK, 0), self.vcpu.cr0()  # the guest's view
        if kind == "clts":
            return bool(mask & shadow & CR0_TS)
        if not mask & CR0_PE_MP_EM_TS:
            return False
        source = self.vcpu.lmsw_source(info)
        if source is None:
            return False  # its operand faults: LMSW runs in the engine and takes the fault
        return bool(mask & 1 and source & 1 and not shadow & 1 or (source ^ shadow) & mask & 0xE)

    def _xss_exits(self) -> bool:
        """SDM 26.1.3: with "enable XSAVES/XRSTORS", XSAVES/XRSTORS exit if any bit is set in
        EDX:EAX AND IA32_XSS AND the XSS-exiting bitmap (without it they are #UD)."""
        if not self._proc2 & msrs.SECONDARY_EXEC_ENABLE_XSAVES:
            return False
        regs = self.vcpu.regs
        mask = (regs.read(X.UC_X86_REG_RDX) & 0xFFFF_FFFF) << 32 | regs.read(X.UC_X86_REG_RAX) & 0xFFFF_FFFF
        return bool(mask & self.vcpu.msrs.get(IA32_XSS, 0) & self._values.get(_F.XSS_EXIT_BITMAP, 0))

    def passthrough(self, kind: str, info, rip: int, length: int) -> bool | None:
        """What a sensitive instruction does in VMX non-root operation without an exit, where
        the engine cannot do it itself (SDM 26.3, 30.3): MOV CR8 reaches the virtual TPR with
        "use TPR shadow", else the APIC's TPR; INVPCID (when enabled) invalidates the TLB;
        RDPMC finds no counter (CPUID leaf 0AH reports none): #GP(0). True: done, skip it;
        False: the engine runs it (or #UD where it cannot); None: RIP already moved."""
        vcpu = self.vcpu
        if kind in ("mov_to_cr", "mov_from_cr") and info[0] == 8:
            use_shadow = self._proc & msrs.CPU_BASED_TPR_SHADOW
            if kind == "mov_from_cr":
                tpr = self._vtpr() if use_shadow else self.tpr
                vcpu.regs.write(_GPR_IDS[info[1]], tpr >> 4 & 0xF)
                return True
            value = vcpu.regs.read(_GPR_IDS[info[1]]) & 0xF
            if not use_shadow:
                self.tpr = value << 4
                return True
            host = vcpu.vm.host  # bits 7:4 of VTPR <- source 3:0; the rest of VTPR cleared
            host.write(self._values[_F.VIRTUAL_APIC_PAGE_ADDR] + VTPR, (value << 4).to_bytes(4, "little"))
            threshold = self._values.get(_F.TPR_THRESHOLD, 0) & 0xF
            if not self._proc2 & msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY:
                if value < threshold:
                    # TPR virtualization (SDM 30.1.2): a trap-like exit after the instruction
                    vcpu.set_rip(rip + length)
                    vcpu._exit(vcpu.vendor.instruction_exit("tpr_below_threshold", rip + length, 0, ()))
                    return None
                return True
            self.apic.tpr_virtualization(rip + length)  # PPR virtualization, then evaluation
            return True
        if kind in ("rdmsr_x2apic", "wrmsr_x2apic"):
            check, is_write = self.msr_check, kind == "wrmsr_x2apic"
            if check is None or check(info, is_write):  # the MSR bitmap makes it exit (25.1.3)
                return vcpu.msr_intercept(info, is_write, rip, length)
            if not self.apic.x2apic:
                return False
            return self.apic.msr(is_write, info, rip, length)
        if kind == "invpcid" and self._proc2 & msrs.SECONDARY_EXEC_ENABLE_INVPCID:
            return vcpu.invpcid(info, rip)
        if kind == "rdpmc":
            vcpu.guest_exception(13, 0, rip)
            return None
        return False

    def _cr_fields(self) -> tuple:
        return _CR_FIELDS(self._values)  # fields every processor supports: in ``values`` from the start

    def _load_guest_view_of_cr0_cr4(self) -> None:
        """The engine holds the CR0/CR4 the guest reads (SDM 26.3: bits owned by the guest/host
        mask read as the read shadow, the others as the register): loaded anew when the VMM
        changed GUEST_CR0/CR4, a read shadow or a mask with VMWRITE since the exit (at the next
        entry, or right after an exit the engine completes)."""
        fields = self._cr_fields()
        saved = self._cr_saved
        if fields == saved or not saved:
            return
        regs = self.vcpu.regs
        for i, reg in ((0, X.UC_X86_REG_CR0), (3, X.UC_X86_REG_CR4)):
            cr, shadow, mask = fields[i:i + 3]
            base = cr if cr != saved[i] else regs.read(reg)  # the engine is newer unless the VMM wrote it
            view = (base & ~mask) | (shadow & mask)
            if regs.read(reg) != view:
                regs.write(reg, view)
        self._cr_saved = fields

    def after_exit(self) -> None:
        """After an exit completed inside the engine (it stands for an exit and a VM entry):
        CR0/CR4 as the VMM left them and, with virtual-interrupt delivery, PPR virtualization
        and evaluation of what the VMM left in RVI / VIRR (SDM 27.3.2.5)."""
        self._load_guest_view_of_cr0_cr4()
        if self.apic.vid:
            self.apic._reentered()

    # -- APIC virtualization: the VMM's side (what KVM does around SDM ch. 30) ------------------
    def post_interrupt(self, vector: int) -> bool:
        """Post ``vector`` in the posted-interrupt descriptor (PIR bit, then ON) and send the
        notification vector to this vCPU if ON was clear (SDM 30.6). Returns whether it sent."""
        return self.apic.post(vector)

    def request_virtual_interrupt(self, vector: int) -> None:
        """The VMM's side without posted interrupts (KVM's apic_set_irr and RVI update): VIRR
        bit and RVI in the virtual-APIC page and GUEST_INTR_STATUS, then what the next VM entry
        does with them (PPR virtualization, evaluation), also when called from an exit hvsim
        completes inside the engine."""
        apic = self.apic
        if apic.page is None:
            raise RuntimeError("request_virtual_interrupt needs 'use TPR shadow' (a virtual-APIC page)")
        apic.page.set_bit(0x200, vector)
        rvi, svi = apic.status()
        apic._set_status(max(rvi, vector), svi)
        apic._reentered()
        self._wake_if_recognized()

    def _wake_if_recognized(self) -> None:
        """Virtual-interrupt delivery wakes a guest in the HLT activity state (SDM 30.2.2): a
        halted vCPU with a recognized virtual interrupt becomes runnable."""
        from hvsim.core.arch import VcpuState

        if self.apic.recognized and self.vcpu.state is VcpuState.HALTED:
            self.vcpu.state = VcpuState.RUNNABLE

    def send_posted_notification(self) -> None:
        """An IPI with POSTED_INTR_NV to this vCPU: taken at its next boundary in the engine, or
        right after its next VM entry; a halted vCPU wakes for it."""
        self.apic.notify()

    def map_apic_access_page(self, gpa: int = 0xFEE0_0000, hpa: int | None = None) -> int:
        """As KVM does: an APIC-access page (``hpa``, default a page of this vCPU's area) mapped
        in the EPT at ``gpa`` (the guest's local APIC base) and written to APIC_ACCESS_ADDR.
        Returns its host-physical address."""
        from hvsim.plugins.x86.apicpage import map_stage2_page

        hpa = self._area + APIC_ACCESS_OFFSET if hpa is None else hpa
        self.vcpu.vm.host.write(hpa, bytes(4096))
        root = self._values[_F.EPT_POINTER] & ~0xFFF
        map_stage2_page(self.vcpu.vm, root, gpa, hpa, EPT_RWX, EPT_RWX | EPT_WB)
        for ept in self._epts.values():
            ept.cache.clear()
        self.vcpu.mmu.tlb.invalidate()
        self._vmwrite(_F.APIC_ACCESS_ADDR, hpa)
        return hpa

    @property
    def posted_descriptor(self) -> int:
        """A 64-byte aligned page of this vCPU's area a VMM may use as its descriptor."""
        return self._area + POSTED_DESC_OFFSET

    def _vtpr(self) -> int:
        return self.vcpu.vm.host.read(self._values[_F.VIRTUAL_APIC_PAGE_ADDR] + VTPR, 1)[0]

    def _exception_bitmap_check(self):
        """SDM 25.2: an exception exits if its bit in the exception bitmap is 1; for #PF the bit
        is inverted unless (error code AND PFEC_MASK) == PFEC_MATCH."""
        v = self._values
        bitmap = v.get(_F.EXCEPTION_BITMAP, 0)
        mask, match = v.get(_F.PAGE_FAULT_ERROR_CODE_MASK, 0), v.get(_F.PAGE_FAULT_ERROR_CODE_MATCH, 0)
        if not bitmap and not match:
            return None  # nothing can exit (a #PF with mask/match mismatch needs bit 14 clear)

        def intercepted(vector: int, error_code: int | None) -> bool:
            hit = bool(bitmap >> vector & 1)
            if vector == 14 and ((error_code or 0) & mask) != match:
                return not hit
            return hit

        return intercepted

    def _msr_bitmap_check(self):
        """SDM 25.1.3: with "use MSR bitmaps", RDMSR/WRMSR of an MSR in 0-1FFF or
        C0000000-C0001FFF exits if its bit is set (read/write, low/high), any other MSR exits."""
        host, base = self.vcpu.vm.host, self._values[_F.MSR_BITMAP]

        def intercepted(msr: int, is_write: bool) -> bool:
            if msr <= 0x1FFF:
                offset = 0x000
            elif 0xC000_0000 <= msr <= 0xC000_1FFF:
                offset, msr = 0x400, msr - 0xC000_0000
            else:
                return True
            offset += 0x800 if is_write else 0
            return bool(host.read(base + offset + msr // 8, 1)[0] >> (msr % 8) & 1)

        return intercepted

    def _io_controls(self):
        """SDM 25.1.3: with "use I/O bitmaps", an access exits if a bit for any port it touches
        is set (bitmap A 0000-7FFF, B 8000-FFFF; wrapping past FFFF always exits); else
        "unconditional I/O exiting" decides for every port."""
        proc = self._values[_F.CPU_BASED_VM_EXEC_CONTROL]
        if not proc & msrs.CPU_BASED_USE_IO_BITMAPS:
            return None if proc & msrs.CPU_BASED_UNCOND_IO_EXITING else _never
        host, a, b = self.vcpu.vm.host, self._values[_F.IO_BITMAP_A], self._values[_F.IO_BITMAP_B]
        host.read(a, 4096), host.read(b, 4096)  # bounds-checked once: both pages are host memory
        view = host.view

        def intercepted(port: int, size: int) -> bool:
            if port + size > 0x10000:
                return True
            for p in range(port, port + size):
                at = (a if p < 0x8000 else b) + ((p & 0x7FFF) >> 3)
                if view[at] >> (p & 7) & 1:
                    return True
            return False

        return intercepted

    def vmexit(self) -> None:
        """Leaving the engine: the guest-state area is saved (SDM 28.3)."""
        self.save_guest_state()

    def save_guest_state(self) -> None:
        """The guest-state area as the processor saves it at an exit (SDM 28.3): the registers
        in one batched read from the engine; the segment and descriptor-table fields from a
        cache keyed by what they derive from (selectors, GDTR, IDTR, TR, CR3, CR0.PE)."""
        vcpu, v, saved = self.vcpu, self._values, self._saved
        regs = vcpu.regs
        batch = self._batch
        if batch is None:
            batch = self._batch = StateBatch(regs, _SAVED_REGS, _SAVED_MMRS)
        (rip, rsp, rflags, cr0, cr3, cr4, dr7, es, cs, ss, ds, fs, gs), (gdtr, idtr, tr) = batch.read()
        v[_F.GUEST_RIP] = saved[_F.GUEST_RIP] = rip
        v[_F.GUEST_RSP] = saved[_F.GUEST_RSP] = rsp
        v[_F.GUEST_RFLAGS] = saved[_F.GUEST_RFLAGS] = rflags
        # The engine holds the guest's view (see _load_guest_view_of_cr0_cr4): the owned bits of
        # GUEST_CR0/CR4 stay the VMM's, the read shadows follow what the guest sees.
        m0, m4 = v.get(_F.CR0_GUEST_HOST_MASK, 0), v.get(_F.CR4_GUEST_HOST_MASK, 0)
        real0, real4 = v.get(_F.GUEST_CR0, cr0 | self.cr0_owned), v.get(_F.GUEST_CR4, cr4 | CR4_OWNED)
        if not self._cr_saved:  # the first save: the loader's state, with the bits VMX needs
            real0, real4 = cr0 | self.cr0_owned, cr4 | CR4_OWNED
        v[_F.GUEST_CR0], v[_F.CR0_READ_SHADOW] = (cr0 & ~m0) | (real0 & m0), cr0
        v[_F.GUEST_CR3] = saved[_F.GUEST_CR3] = cr3
        v[_F.GUEST_CR4], v[_F.CR4_READ_SHADOW] = (cr4 & ~m4) | (real4 & m4), cr4
        self._cr_saved = self._cr_fields()
        v[_F.GUEST_DR7] = dr7 | 0x400
        exit_controls = v[_F.VM_EXIT_CONTROLS]
        if exit_controls & msrs.VM_EXIT_SAVE_IA32_EFER or _F.GUEST_IA32_EFER not in saved:
            v[_F.GUEST_IA32_EFER] = saved[_F.GUEST_IA32_EFER] = vcpu.efer()
        if exit_controls & msrs.VM_EXIT_SAVE_IA32_PAT:
            v[_F.GUEST_IA32_PAT] = saved[_F.GUEST_IA32_PAT] = regs.msr(MSR_IA32_PAT)
        # Interruptibility and activity state (SDM 28.3.4): what the next entry resumes with.
        v[_F.GUEST_INTERRUPTIBILITY_INFO] = saved[_F.GUEST_INTERRUPTIBILITY_INFO] = vcpu.interruptibility()
        v[_F.GUEST_ACTIVITY_STATE] = saved[_F.GUEST_ACTIVITY_STATE] = (
            GUEST_ACTIVITY_HLT if vcpu.activity_hlt else GUEST_ACTIVITY_ACTIVE)
        if self._timer_start is not None:
            self._save_preemption_timer()
        key = (es, cs, ss, ds, fs, gs, cr0 & 1, cr3, gdtr, idtr, tr)
        fields = self._segment_fields.get(key)
        if fields is None:
            fields = self._segment_fields_of(key)
        v.update(fields)

    def _segment_fields_of(self, key: tuple) -> dict[int, int]:
        """The segment, GDTR/IDTR, TR and LDTR fields for a :meth:`save_guest_state` key (kept:
        a hidden part is the descriptor's as of its load, as the processor keeps it)."""
        vcpu = self.vcpu
        *selectors, pe, cr3, gdtr, idtr, _tr = key
        context = (gdtr[1:3], cr3) if pe else None
        fields: dict[int, int] = {}
        for (name, _reg), selector in zip(_SEGMENTS, selectors):
            f_selector, f_base, f_limit, f_ar = GUEST_SEGMENT_FIELDS[name]
            fields[f_selector], fields[f_base], fields[f_limit], fields[f_ar] = self._segment(selector & 0xFFFF, context)
        for name, (_sel, base, limit, _flags) in (("GDTR", gdtr), ("IDTR", idtr)):
            f_base, f_limit = GUEST_TABLE_FIELDS[name]
            fields[f_base], fields[f_limit] = base, limit
        tr = vcpu.task_register()
        selector, base, limit, ar = (tr[0], tr[1], tr[2], tr[3] | tr[4] << 12) \
            if tr is not None else TR_RESET  # never loaded: the reset state, as KVM models it
        fields[_F.GUEST_TR_SELECTOR], fields[_F.GUEST_TR_BASE] = selector, base
        fields[_F.GUEST_TR_LIMIT], fields[_F.GUEST_TR_AR_BYTES] = limit, ar
        fields[_F.GUEST_LDTR_SELECTOR], fields[_F.GUEST_LDTR_AR_BYTES] = 0, AR_UNUSABLE
        if len(self._segment_fields) > 64:
            self._segment_fields.clear()
        self._segment_fields[key] = fields
        return fields

    def _segment(self, selector: int, context: tuple | None = None) -> tuple[int, int, int, int]:
        """(selector, base, limit, access rights) in the VMCS format (SDM 24.4.1, Table 24-2):
        access byte in 7:0, AVL/L/D-B/G in 15:12, bit 16 for an unusable segment."""
        hidden = (self.vcpu.hidden_segment(selector) if context is None
                  else self.vcpu.hidden_segment_in(selector, context))
        if hidden is None:
            return selector, 0, 0, AR_UNUSABLE
        base, limit, access, flags = hidden
        return selector, base, limit, access | flags << 12


def _exiting(proc: int, proc2: int) -> dict[str, bool]:
    """Which instructions exit under these primary and secondary processor-based controls."""
    return {  # SDM 25.1.2 / 25.1.3: which instructions the controls make exit
        "rdtsc": bool(proc & msrs.CPU_BASED_RDTSC_EXITING),
        "rdtscp": bool(proc & msrs.CPU_BASED_RDTSC_EXITING and proc2 & msrs.SECONDARY_EXEC_ENABLE_RDTSCP),
        "invlpg": bool(proc & msrs.CPU_BASED_INVLPG_EXITING),
        "wbinvd": bool(proc2 & msrs.SECONDARY_EXEC_WBINVD_EXITING),
        "invd": True,  # unconditional (SDM 25.1.2), as are the VMX instructions:
        **{name: True for name in ("vmclear", "vmlaunch", "vmptrld", "vmptrst", "vmread", "vmresume",
                                   "vmwrite", "vmxoff", "vmxon", "invept", "invvpid", "vmfunc")},
        "pause": bool(proc & msrs.CPU_BASED_PAUSE_EXITING),
        "getsec": True, "xsetbv": True,  # unconditional (SDM 26.1.2)
        "invpcid": bool(proc2 & msrs.SECONDARY_EXEC_ENABLE_INVPCID and proc & msrs.CPU_BASED_INVLPG_EXITING),
        "mwait": bool(proc & msrs.CPU_BASED_MWAIT_EXITING),
        "monitor": bool(proc & msrs.CPU_BASED_MONITOR_EXITING),
        "rdpmc": bool(proc & msrs.CPU_BASED_RDPMC_EXITING),
        "rdrand": bool(proc2 & msrs.SECONDARY_EXEC_RDRAND_EXITING),
        "rdseed": bool(proc2 & msrs.SECONDARY_EXEC_RDSEED_EXITING),
        **dict.fromkeys(_DESCRIPTOR_TABLE, bool(proc2 & msrs.SECONDARY_EXEC_DESC)),
        **dict.fromkeys(("mov_to_dr", "mov_from_dr"), bool(proc & msrs.CPU_BASED_MOV_DR_EXITING)),
        "shutdown": True,  # a triple fault always exits (SDM 25.2)
        "task_switch": True,  # task switches always exit (SDM 26.4.2)
    }


def _never(*_access) -> bool:
    return False
