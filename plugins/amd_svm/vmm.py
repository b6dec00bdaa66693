"""The hypervisor side of one AMD SVM vCPU: its VMCB, I/O and MSR permission maps, host-save
area, and the VMRUN / #VMEXIT the run loop performs around every stay in the guest.

hvsim acts as the VMM here, the way KVM's svm.c does: EFER.SVME set, VM_HSAVE_PA programmed,
a VMCB with the intercepts the platform needs (VMRUN, VMMCALL, CPUID, HLT, IOIO_PROT through an
all-ones IOPM, MSR_PROT for the MSRs hvsim models, SHUTDOWN), guest ASID 1. Every exit writes
its EXITCODE, EXITINFO1, EXITINFO2 and nRIP into the VMCB bytes (APM 15.6); leaving the engine
saves the guest state into the state-save area; entering it runs VMRUN's consistency checks
(15.5.1) and loads those of RAX, RSP, RIP, RFLAGS and CR2 that changed in the VMCB since the
exit, so a VMM plugin that edits them between exits is obeyed (an event hvsim itself delivered
meanwhile, as VMRUN's EVENTINJ would, is kept).

Interrupts (15.21): the INTR / NMI / INIT / VINTR intercepts, V_INTR_MASKING, V_IRQ with its
priority against V_TPR (the guest's CR8) and virtual GIF become an ``EventControls`` at every
VMRUN for plugins/x86/events.py; INTERRUPT_SHADOW is saved and loaded, EXITINTINFO records an
event whose delivery an intercepted exception interrupted, and the PAUSE filter counts PAUSEs.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as X

from hvsim.plugins.x86 import paging
from hvsim.plugins.x86.events import EventControls
from hvsim.plugins.x86.interruptibility import BLOCKING_BY_NMI, SHADOW
from hvsim.plugins.x86.regs import StateBatch
from hvsim.plugins.x86.tsc import guest_tsc_hz

from . import iopm
from .avic import Avic
from .exits import SvmExitInfo, SvmVendor
from .npt import Npt
from .svm import EFER_SVME, MSR_VM_HSAVE_PA, SvmCpu
from .vmcb import FIELD, VMCB_SIZE, Segment, Vmcb, VmcbCache, direct_view

MASK64 = (1 << 64) - 1
EVENTINJ_SOFT_INT = 4
VMEXIT_INVALID = MASK64  # -1 as the VMCB stores it

# TLB_CONTROL (APM 15.16.1)
TLB_CONTROL_DO_NOTHING, TLB_CONTROL_FLUSH_ALL_ASID, TLB_CONTROL_FLUSH_ASID, TLB_CONTROL_FLUSH_ASID_LOCAL = 0, 1, 3, 7
_NPT_TABLE = paging.P | paging.RW | paging.US  # NPT accesses are user accesses (15.25.5)
_CR0_PE_PG = 1 | paging.CR0_PG

# Layout of the per-vCPU hypervisor area (4 KiB aligned pieces).
VMCB_OFFSET, IOPM_OFFSET, MSRPM_OFFSET, HSAVE_OFFSET = 0x0000, 0x1000, 0x4000, 0x6000
AVIC_BAR_OFFSET = 0x7000  # the page the NPT maps at the guest's APIC base for AVIC (never accessed)

_INSTRUCTION_INTERCEPTS = {"rdtsc": "RDTSC", "rdtscp": "RDTSCP", "invlpg": "INVLPG", "wbinvd": "WBINVD",
                           "invd": "INVD", "pause": "PAUSE", "vmrun": "VMRUN", "vmload": "VMLOAD",
                           "vmsave": "VMSAVE", "stgi": "STGI", "clgi": "CLGI", "skinit": "SKINIT",
                           "invlpga": "INVLPGA", "rdpmc": "RDPMC", "pushf": "PUSHF", "popf": "POPF",
                           "iret": "IRET", "intn": "INTN", "icebp": "ICEBP", "monitor": "MONITOR",
                           "mwait": "MWAIT", "xsetbv": "XSETBV", "rdpru": "RDPRU", "invpcid": "INVPCID",
                           "sidt": "IDTR_READ", "sgdt": "GDTR_READ", "sldt": "LDTR_READ", "str": "TR_READ",
                           "lidt": "IDTR_WRITE", "lgdt": "GDTR_WRITE", "lldt": "LDTR_WRITE", "ltr": "TR_WRITE",
                           "task_switch": "TASK_SWITCH"}
_OPTIONAL = ("pushf", "popf", "iret")  # trapped only while intercepted (plugins/x86/traps.py)
CR0_TS_MP = (1 << 3) | (1 << 1)  # the bits a write may change without a selective CR0 write exit
MSR_EFER = 0xC000_0080
EFER_LMA = 1 << 10
EFER_VALID = 0x1 | 0x100 | 0x400 | 0x800 | 0x1000 | 0x2000 | 0x4000 | 0x8000  # SCE LME LMA NXE SVME LMSLE FFXSR TCE
INTERCEPTS = ("VMRUN", "VMMCALL", "CPUID", "HLT", "IOIO_PROT", "MSR_PROT", "SHUTDOWN")
# Every intercept hvsim's SVM honours (`hvsim spec --arch amd_svm intercepts`).
HONOURED = frozenset({*_INSTRUCTION_INTERCEPTS.values(), *INTERCEPTS, "CR0_SEL_WRITE", "MWAIT_CONDITIONAL",
                      "INTR", "NMI", "SMI", "INIT", "VINTR",  # event intercepts (events.EventControls)
                      "EFER_WRITE_TRAP", *(f"CR{n}_{d}" for n in (0, 2, 3, 4, 8) for d in ("READ", "WRITE")),
                      *(f"DR{n}_{d}" for n in range(8) for d in ("READ", "WRITE")), *(f"EXCP{n}" for n in range(32))})
_LOADED_ON_VMRUN = (("RAX", X.UC_X86_REG_RAX), ("RSP", X.UC_X86_REG_RSP), ("RIP", X.UC_X86_REG_RIP),
                    ("RFLAGS", X.UC_X86_REG_RFLAGS), ("CR2", X.UC_X86_REG_CR2))
_GPR_IDS = [getattr(X, f"UC_X86_REG_{n}") for n in ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
                                                     "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")]
_SEGMENTS = (("ES", X.UC_X86_REG_ES), ("CS", X.UC_X86_REG_CS), ("SS", X.UC_X86_REG_SS),
             ("DS", X.UC_X86_REG_DS), ("FS", X.UC_X86_REG_FS), ("GS", X.UC_X86_REG_GS))
_SAVED_REGS = (*(reg for _name, reg in _LOADED_ON_VMRUN), X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4,
               X.UC_X86_REG_DR6, X.UC_X86_REG_DR7, *(reg for _name, reg in _SEGMENTS))
_LOADED_UNPACK = tuple({4: struct.Struct("<I"), 8: struct.Struct("<Q")}[FIELD[name].width].unpack_from
                       for name, _reg in _LOADED_ON_VMRUN)
_LOADED_OFFSETS = tuple(FIELD[name].offset for name, _reg in _LOADED_ON_VMRUN)
_SHADOW_OFFSET = FIELD["INTERRUPT_SHADOW"].offset
# What #VMEXIT saves from the engine's registers, in save_guest_state's order (whole units).
_STATE_NAMES = ("RAX", "RSP", "RIP", "RFLAGS", "CR2", "CR0", "CR3", "CR4", "EFER", "DR6", "DR7", "CPL")
_STATE_PACK = tuple({1: struct.Struct("<B"), 8: struct.Struct("<Q")}[FIELD[name].width].pack_into
                    for name in _STATE_NAMES)
_STATE_OFFSETS = tuple(FIELD[name].offset for name in _STATE_NAMES)
_EVENTINJ_V = FIELD["EVENTINJ"].offset + 3  # the byte holding V, bit 31
_SAVED_MMRS = (X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_TR)
_SEG_BLOCK = FIELD["ES_SELECTOR"].offset  # ES, CS, SS, DS, FS, GS: 16 bytes each, in this order (Table B-2)
_SEG_BLOCK_SIZE = FIELD["GS_BASE"].offset + 8 - _SEG_BLOCK
_EXIT_INFO = FIELD["EXITCODE"].offset  # 070H: EXITCODE, EXITINFO1, EXITINFO2, EXITINTINFO to 08FH
_AFTER_EXIT_INFO = FIELD["EXITINTINFO"].offset + 8
_NRIP = FIELD["NRIP"].offset  # 0C8H
_AFTER_NRIP = _NRIP + 8
_TLB_CONTROL = FIELD["TLB_CONTROL"].offset  # one byte (058H)


class SvmGuestContext:
    """One vCPU's SVM structures in host memory, outside every VM's guest-physical space."""

    exits_before_faults = frozenset()  # 15.7.1: intercepts come after #UD and CPL checks

    def __init__(self, vcpu, area: int) -> None:
        self.vcpu = vcpu
        self._area = area
        host = vcpu.vm.host
        self.vmcb = vmcb = Vmcb(host, area + VMCB_OFFSET)
        vmcb.clear()
        self.iopm_pa, self.msrpm_pa = area + IOPM_OFFSET, area + MSRPM_OFFSET
        host.write(self.iopm_pa, b"\xff" * iopm.IOPM_SIZE)  # every port intercepted, as KVM does
        host.write(self.msrpm_pa, bytes(iopm.MSRPM_SIZE))
        for msr in vcpu.msrs:  # the MSRs hvsim models exit; the rest are the engine's
            iopm.msrpm_set(host, self.msrpm_pa, msr, read=True, write=True)
        for name in INTERCEPTS:
            vmcb.set_intercept(name)
        vmcb.write("IOPM_BASE_PA", self.iopm_pa)
        vmcb.write("MSRPM_BASE_PA", self.msrpm_pa)
        vmcb.write("GUEST_ASID", 1)
        # KVM's configuration: nested paging on, one nested page table per VM; or, with shadow
        # paging, no NPT and the intercepts that feed the VMM's shadow tables (#PF, CR0/CR3/CR4
        # writes, INVLPG), the guest running with PE and PG set in the real CR0.
        self.shadow = vcpu.vm.arch.paging == "shadow"
        if self.shadow:
            from hvsim.plugins.x86.shadow import ShadowMmu

            vmcb.write("INTERCEPT_EXCEPTIONS", 1 << 14)
            vmcb.write("INTERCEPT_CR_WRITE", 1 << 0 | 1 << 3 | 1 << 4)
            vmcb.set_intercept("INVLPG")
            vcpu.mmu.shadow = ShadowMmu(vcpu, *vcpu.vm.arch.shadow_pool(vcpu.index))
        else:
            vmcb.write("NP_ENABLE", 1)
            vmcb.write("N_CR3", vcpu.vm.arch.ept_root(self.build_identity_npt))
        self.clean_cache = VmcbCache()  # what VMRUN may take from its cached copy (15.15.3)
        self._npts: dict[int, Npt] = {}
        self.cpu = SvmCpu(efer=EFER_SVME)
        self.cpu.wrmsr(MSR_VM_HSAVE_PA, area + HSAVE_OFFSET)
        self._write_exit = vmcb.exit_writer()
        self._last: SvmExitInfo | None = None
        self._saved: dict[str, int] = {}  # RAX..CR2 as the last #VMEXIT wrote them
        self.io_check = None  # set at VMRUN from IOIO_PROT and the IOPM (15.10)
        self.hlt_exits = self.cpuid_exits = True  # set at VMRUN from the intercept vector
        self.msr_check = None
        self.exception_check = None
        self._intercepted: dict[str, bool] = {}
        self._cr_reads = self._cr_writes = self._dr_reads = self._dr_writes = 0
        self.tpr = 0  # the local APIC's TPR that CR8 reaches without V_INTR_MASKING (bits 7:4)
        self.event_controls = EventControls()
        self._shadow_saved = 0
        self._int_ctl = b""
        self._pause_count = 0
        self._last_pause: float | None = None
        self._batch = None  # the registers save_guest_state reads in one call
        self._view: tuple = (None, 0)  # (memoryview, offset) of the VMCB, from the first save on
        self._segment_state: dict[tuple, tuple[bytes, tuple]] = {}
        self._page_after_exit: bytes | None = None  # the VMCB as the last #VMEXIT left it
        self._ran = False  # the last VMRUN passed its checks (the fast path's precondition)
        self._handled_inside = False  # an exit completed inside the engine since the last VMRUN
        self._loaded: dict = {}  # the cached-group state the last full VMRUN loaded
        self._memory_virtualization({name: vmcb.read(name) for name in ("GUEST_ASID", "TLB_CONTROL", "NP_ENABLE",
                                                                        "N_CR3")})
        self.avic = Avic(self)  # the processor's AVIC (APM 15.29, avic.py)

    @staticmethod
    def build_identity_npt(vm, base: int) -> int:
        """A nested page table at host-physical ``base`` mapping every RAM slot of ``vm``
        (guest-physical -> its host-physical backing) with 2 MiB pages; MMIO stays unmapped,
        so a device access is an NPF, as under KVM. Returns N_CR3."""
        return vm.arch.identity_stage2(vm, base, _NPT_TABLE, _NPT_TABLE | paging.PS)

    # -- every exit -------------------------------------------------------------------------
    def record(self, raw: SvmExitInfo) -> None:
        """#VMEXIT: EXITCODE, EXITINFO1, EXITINFO2 and nRIP into the VMCB. Records are shared
        per instruction, so an exit from the same place as the last one is already there."""
        if raw is not self._last:
            self._write_exit(raw.EXITCODE & MASK64, raw.EXITINFO1, raw.EXITINFO2, raw.NRIP, raw.EXITINTINFO)
            self._last = raw

    # -- around each stay in the engine -----------------------------------------------------
    def vmrun(self) -> str | None:
        """VMRUN: the consistency checks, then the guest state from the VMCB. Returns the reason
        VMRUN failed (EXITCODE is then VMEXIT_INVALID), or None."""
        if not self._saved:
            self.save_guest_state()  # the VMM's initial state: what the loader set up
        if self._unchanged_since_exit():
            # The VMCB holds what the last #VMEXIT wrote into it, nothing else changed: the
            # consistency checks passed on this state's controls and the save area is what
            # the processor saved (consistent by construction); the intercepts, bitmaps and
            # event controls derived at the last full VMRUN still hold.
            self.cpu.check_instruction("VMRUN", 0, self.vmcb.pa)
            self.cpu.gif = self.cpu.in_guest = True
            self._last = None
            self._memory_virtualization(self._loaded)
            self.avic.configure()
            self.event_controls.virtual_apic = self.avic if self.avic.enabled else None
            self.resume_state()
            return None
        self._ran = False
        failures = self.cpu.vmrun(self.vmcb)
        self._last = None
        if failures:
            return "VMRUN failed its consistency checks (APM 15.5.1): " + "; ".join(str(f) for f in failures)
        vmcb, host = self.vmcb, self.vcpu.vm.host
        intercepted = vmcb.intercepts()
        self.io_check = (iopm.iopm_checker(host, vmcb.read("IOPM_BASE_PA"))
                         if intercepted("IOIO_PROT") else _never)
        self.msr_check = (iopm.msrpm_checker(host, vmcb.read("MSRPM_BASE_PA"))
                          if intercepted("MSR_PROT") else _never)
        self.hlt_exits, self.cpuid_exits = intercepted("HLT"), intercepted("CPUID")
        self._intercepted = {kind: intercepted(name) for kind, name in _INSTRUCTION_INTERCEPTS.items()}
        for name in ("CR0_SEL_WRITE", "MWAIT_CONDITIONAL", "EFER_WRITE_TRAP"):
            self._intercepted[name] = intercepted(name)
        self.vcpu.want_traps(frozenset(k for k in _OPTIONAL if self._intercepted[k]))
        self._intercepted["shutdown"] = intercepted("SHUTDOWN")
        self._pause_count = vmcb.read("PAUSE_FILTER_COUNT")
        self.event_controls = self._event_controls()
        self._int_ctl = host.read(vmcb.pa + 0x060, 8)
        self._cr_reads, self._cr_writes = vmcb.read("INTERCEPT_CR_READ"), vmcb.read("INTERCEPT_CR_WRITE")
        self._dr_reads, self._dr_writes = vmcb.read("INTERCEPT_DR_READ"), vmcb.read("INTERCEPT_DR_WRITE")
        wanted = {k for k in ("sgdt", "sidt", "lgdt", "lidt", "sldt", "str", "lldt", "ltr") if self._intercepted[k]}
        wanted |= {"mov_from_dr"} if self._dr_reads else set()
        wanted |= {"mov_to_dr"} if self._dr_writes else set()
        wanted |= {"smsw"} if self._cr_reads & 1 else set()
        wanted |= {"clts", "lmsw"} if self._cr_writes & 1 or self._intercepted["CR0_SEL_WRITE"] else set()
        self.vcpu.want_traps(frozenset(wanted))
        exceptions = vmcb.read("INTERCEPT_EXCEPTIONS")
        self.exception_check = (lambda vector, _code: bool(exceptions >> vector & 1)) if exceptions else None
        self._loaded = self.clean_cache.vmrun(vmcb)
        self._memory_virtualization(self._loaded)
        self._ran = True
        self.avic.configure()
        self.event_controls.virtual_apic = self.avic if self.avic.enabled else None
        self.resume_state()
        return None

    def _unchanged_since_exit(self) -> bool:
        """Whether this VMRUN may skip its checks and decoding: the last VMRUN of this VMCB
        passed them, and its bytes are those the last #VMEXIT left, apart from the exit
        information (EXITCODE..EXITINTINFO, NRIP: written at every exit, read by no VMRUN
        check), and TLB_CONTROL asks for no flush. A VMM that wrote any field (clean bit
        set or not) gets the full VMRUN; so does every VMRUN after an exit completed inside
        the engine (its handler ran while the guest's state was still being changed)."""
        snap, inside = self._page_after_exit, self._handled_inside
        self._handled_inside = False
        if not self._ran or snap is None or inside:
            return False
        page = self.vmcb.page()
        return (page[_TLB_CONTROL] == 0 and page[_AFTER_NRIP:] == snap[_AFTER_NRIP:]
                and page[:_EXIT_INFO] == snap[:_EXIT_INFO] and page[_AFTER_EXIT_INFO:_NRIP] == snap[_AFTER_EXIT_INFO:_NRIP])

    def _memory_virtualization(self, state: dict) -> None:
        """Nested paging and the guest's ASID as VMRUN loads them (NP_ENABLE, N_CR3 and
        GUEST_ASID may come from the processor's cached copy when their clean bits are set),
        then TLB_CONTROL (15.16.1): 1 flushes every ASID, 3 this guest's, 7 its non-global
        entries. Nested translations are tagged by ASID like the guest's own."""
        mmu, asid, control = self.vcpu.mmu, state["GUEST_ASID"], state["TLB_CONTROL"]
        if control == TLB_CONTROL_FLUSH_ALL_ASID:
            self._flush_nested()
            mmu.tlb.invalidate()
        elif control in (TLB_CONTROL_FLUSH_ASID, TLB_CONTROL_FLUSH_ASID_LOCAL):
            self._flush_nested()
            mmu.tlb.invalidate(asid, keep_global=control == TLB_CONTROL_FLUSH_ASID_LOCAL)
        if state["NP_ENABLE"] & 1:
            ncr3 = state["N_CR3"]
            npt = self._npts.get(ncr3)
            if npt is None:
                npt = self._npts[ncr3] = Npt(self.vcpu.vm.host, ncr3)
            mmu.stage2 = npt
        else:
            mmu.stage2 = None  # guest-physical is host-physical: the VMM's shadow tables
        mmu.tag = asid

    def _flush_nested(self) -> None:
        for npt in self._npts.values():
            npt.cache.clear()

    def invlpga(self, address: int, asid: int) -> None:
        """INVLPGA (15.16.3), as the host executes it: drop the translation of ``address`` in
        ``asid``."""
        self.vcpu.mmu.tlb.invalidate(asid, address=address)

    def resume_state(self) -> None:
        """The guest state the VMM changed in the VMCB since the exit, then EVENTINJ."""
        regs, saved = self.vcpu.regs, self._saved
        page = self.vmcb.page()  # one read of the 4 KiB, fields unpacked at their offsets
        for (name, reg), unpack, offset in zip(_LOADED_ON_VMRUN, _LOADED_UNPACK, _LOADED_OFFSETS):
            value = unpack(page, offset)[0]
            if value != saved[name]:
                regs.write(reg, value)
        shadow = page[_SHADOW_OFFSET] & 1  # INTERRUPT_SHADOW: bit 0 of 068H
        if shadow != self._shadow_saved:  # the VMM set or cleared the guest's interrupt shadow
            vcpu = self.vcpu
            vcpu.set_interruptibility((1 if shadow else 0) | (BLOCKING_BY_NMI if vcpu.nmi_blocked else 0))
            self._shadow_saved = shadow
        self._inject()

    def request_vintr(self, vector: int, priority: int | None = None, ignore_tpr: bool = False) -> None:
        """The VMM asks for a virtual interrupt (15.21.4): V_IRQ with V_INTR_VECTOR, V_INTR_PRIO
        (default: the vector's class) and V_IGN_TPR; taken from the next boundary, also when
        called from an exit hvsim completes inside the engine."""
        vmcb = self.vmcb
        vmcb.write("V_INTR_VECTOR", vector)
        vmcb.write("V_INTR_PRIO", vector >> 4 if priority is None else priority)
        vmcb.write("V_IGN_TPR", int(ignore_tpr))
        vmcb.write("V_IRQ", 1)
        self.after_exit()

    def after_exit(self) -> None:
        """An exit completed inside the engine stands for a #VMEXIT and a VMRUN: a VMM that
        changed the virtual-interrupt controls (int_ctl 0x060, int_vector 0x064) in its handler
        is obeyed from the next boundary (one 8-byte read when nothing changed)."""
        self._handled_inside = True  # its handler may have written the VMCB: the next VMRUN reads it all
        raw = self.vcpu.vm.host.read(self.vmcb.pa + 0x060, 8)
        if raw == self._int_ctl:
            return
        self._int_ctl = raw
        ctl, new = self.event_controls, self._event_controls()  # the run loop holds ctl itself
        ctl.vintr, ctl.vintr_exits, ctl.vgif = new.vintr, new.vintr_exits, new.vgif
        ctl.intr_exit_ignores_if = new.intr_exit_ignores_if
        if ctl.vintr is not None and self.vcpu._in_engine:
            self.vcpu.recheck()

    def _event_controls(self) -> EventControls:
        """The interrupt intercepts and the virtual-interrupt fields (15.21): with V_INTR_MASKING
        the guest's RFLAGS.IF masks only virtual interrupts, physical ones exit whatever it is."""
        vmcb = self.vmcb
        read, intercepted = vmcb.read, vmcb.intercepts()
        vintr = None
        if read("V_IRQ"):
            vintr = (read("V_INTR_VECTOR"), read("V_INTR_PRIO"), bool(read("V_IGN_TPR")), read("V_TPR"))
        return EventControls(intr_exits=intercepted("INTR"), intr_exit_ignores_if=bool(read("V_INTR_MASKING")),
                             nmi_exits=intercepted("NMI"), init_exits=intercepted("INIT"),
                             smi_exits=intercepted("SMI"),
                             vintr=vintr, vintr_exits=intercepted("VINTR"),
                             vgif=not read("V_GIF_ENABLE") or bool(read("V_GIF")))

    def virtual_gif(self, value: bool) -> bool:
        """The guest's STGI / CLGI with virtual GIF enabled and not intercepted (APM Vol. 2,
        "Virtual GIF"): they
        set / clear V_GIF, which then holds back virtual interrupts as GIF would. Returns False
        (nothing done, the instruction is #UD) without V_GIF_ENABLE."""
        if not self.vmcb.read("V_GIF_ENABLE"):
            return False
        self.vmcb.write("V_GIF", int(value))
        self.event_controls.vgif = value
        return True

    def cr8(self, value: int | None = None) -> int:
        """The guest's CR8 (TPR[3:0]) is V_TPR (15.21.2, with V_INTR_MASKING as KVM runs; hvsim
        models no APIC TPR otherwise): a write updates it and the priority V_IRQ is compared
        against; a read returns it."""
        if value is None:
            return self.vmcb.read("V_TPR") & 0xF
        self.vmcb.write("V_TPR", value)
        if self.avic.enabled:  # the backing page's TPR follows (15.29.3.1)
            self.avic.set_tpr(value << 4)
        vintr = self.event_controls.vintr
        if vintr is not None:
            self.event_controls.vintr = vintr[:3] + (value,)
        return value

    def event_exit(self, kind: str, vector: int = 0):
        return SvmVendor.event_exit(kind, vector)

    # -- AVIC: the host's side (APM 15.29) ----------------------------------------------------
    def avic_doorbell(self, host_apic_id: int) -> None:
        """A write of MSR C001_011BH (AVIC doorbell) naming ``host_apic_id``: the vCPU running
        there re-evaluates its backing page's IRR at its next boundary (hvsim: host physical APIC
        ID n is vCPU n); a vCPU that is not in the engine does so at its next VMRUN."""
        vcpus = self.vcpu.vm.vcpus
        if not 0 <= host_apic_id < len(vcpus):
            return  # no such core: the doorbell goes nowhere
        target = vcpus[host_apic_id].context
        if getattr(target, "avic", None) is not None and target.avic.enabled:
            target.avic.evaluate()
            if target.avic.recognized:  # a guest halted in guest mode wakes for it
                target.avic_kick()

    def map_avic_bar(self, gpa: int = 0xFEE0_0000) -> None:
        """As KVM does for AVIC: a page mapped in the NPT at the guest's APIC base (``gpa``), which
        AVIC_APIC_BAR then names; the guest's accesses to it never reach that page."""
        from hvsim.plugins.x86.apicpage import map_stage2_page

        hpa = self._area + AVIC_BAR_OFFSET
        map_stage2_page(self.vcpu.vm, self.vmcb.read("N_CR3") & ~0xFFF, gpa, hpa, _NPT_TABLE, _NPT_TABLE)
        self._flush_nested()
        self.vcpu.mmu.tlb.invalidate()
        self.vmcb.write("AVIC_APIC_BAR", gpa)

    def avic_kick(self) -> None:
        """What a VMM does for a target that was not running (AVIC_INCOMPLETE_IPI): make the
        halted vCPU runnable; its backing page's IRR is evaluated at its VMRUN."""
        from hvsim.core.arch import VcpuState

        if self.vcpu.state is VcpuState.HALTED:
            self.vcpu.state = VcpuState.RUNNABLE

    def window_exit(self, kind: str):
        return SvmVendor.window_exit(kind)

    def take_virtual_interrupt(self) -> None:
        """The processor takes the virtual interrupt: V_IRQ is cleared (15.21.4)."""
        self.vmcb.write("V_IRQ", 0)
        self.event_controls.vintr = None

    def _pause_filtered(self) -> bool:
        """Pause filter (15.14.4): with PAUSE_FILTER_COUNT non-zero, only the PAUSE that takes the
        counter loaded at VMRUN to zero is intercepted; the counter then starts again. With
        PAUSE_FILTER_THRESHOLD non-zero, a PAUSE more than that many TSC cycles after the
        previous one reloads the counter first (the guest is not spinning on a lock)."""
        read = self.vmcb.read
        count = read("PAUSE_FILTER_COUNT")
        if not count:
            return False
        clock = self.vcpu.clock
        threshold, now = read("PAUSE_FILTER_THRESHOLD"), clock.now()
        if threshold and self._last_pause is not None and (now - self._last_pause) * guest_tsc_hz(clock) > threshold:
            self._pause_count = count
        self._last_pause = now
        self._pause_count = (self._pause_count or count) - 1
        if self._pause_count:
            return True
        self._pause_count = count
        return False

    def intercepts(self, kind: str, info) -> bool | str:
        """Whether this sensitive instruction is intercepted by the VMCB (15.8-15.14); a string
        names a more precise exit (the selective CR0 write, MWAIT with the monitor armed)."""
        if kind == "pause" and self._intercepted.get("pause") and self._pause_filtered():
            return False
        if kind == "mov_to_cr":
            if self._cr_writes >> info[0] & 1:
                return True
            return info[0] == 0 and self._selective_cr0(self.vcpu.read_gpr(info[1]))
        if kind == "mov_from_cr":
            return bool(self._cr_reads >> info[0] & 1)
        if kind in ("clts", "lmsw"):  # 15.8.1: CR0 writes; LMSW may also be a selective one
            if self._cr_writes & 1:
                return True
            if kind == "clts":
                return False  # CLTS changes only TS
            source = self.vcpu.lmsw_source(info)
            if source is None:
                return False  # its operand faults: LMSW runs in the engine and takes the fault
            return self._selective_cr0(self.vcpu.cr0() & ~0xE | source & 0xF)
        if kind == "smsw":
            return bool(self._cr_reads & 1)
        if kind == "mov_to_dr":
            return bool(self._dr_writes >> info[0] & 1)
        if kind == "mov_from_dr":
            return bool(self._dr_reads >> info[0] & 1)
        if kind == "mwait" and not self._intercepted.get("mwait"):
            # 15.9: MWAIT_CONDITIONAL intercepts MWAIT only if the monitor hardware is armed
            return "mwait_conditional" if self._intercepted.get("MWAIT_CONDITIONAL") and self.vcpu.monitor_armed else False
        return self._intercepted.get(kind, False)

    def _selective_cr0(self, value: int) -> bool | str:
        """15.8.2: the selective CR0 write intercept takes writes that change a CR0 bit other
        than TS and MP (the CR0 write intercept, when also set, wins)."""
        if self._intercepted.get("CR0_SEL_WRITE") and (value ^ self.vcpu.cr0()) & ~CR0_TS_MP & 0xFFFF_FFFF:
            return "cr0_sel_write"
        return False

    def passthrough(self, kind: str, info, rip: int, length: int) -> bool | None:
        """What a sensitive instruction does in the guest without an intercept, where the engine
        cannot do it itself: CR8 reads/writes V_TPR under V_INTR_MASKING (15.21.1), else the
        APIC's TPR; RDPMC finds no counter: #GP(0); an EFER write completes, then the EFER write
        trap (15.9) reports the new value. True: done, skip it; False: the engine runs it (or
        #UD where it cannot); None: RIP already moved."""
        vcpu, vmcb = self.vcpu, self.vmcb
        if kind in ("mov_to_cr", "mov_from_cr") and info[0] == 8:
            masking = vmcb.read("V_INTR_MASKING")
            if kind == "mov_from_cr":
                vcpu.regs.write(_GPR_IDS[info[1]], vmcb.read("V_TPR") & 0xF if masking else self.tpr >> 4)
            elif masking:
                self.cr8(vcpu.read_gpr(info[1]) & 0xF)
                vcpu.recheck()  # a lowered TPR may let V_IRQ in at the next boundary
            else:
                self.tpr = (vcpu.read_gpr(info[1]) & 0xF) << 4
            return True
        if kind in ("stgi", "clgi") and self.virtual_gif(kind == "stgi"):
            vcpu.recheck()  # V_GIF may have opened the window
            return True
        if kind == "rdpmc":
            vcpu.guest_exception(13, 0, rip)
            return None
        if kind in ("rdmsr_x2apic", "wrmsr_x2apic"):
            # AVIC has no x2APIC mode: the guest's x2APIC MSRs are ordinary MSR intercepts
            check, is_write = self.msr_check, kind == "wrmsr_x2apic"
            if check is None or not check(info, is_write):
                return False
            return vcpu.msr_intercept(info, is_write, rip, length)
        if kind == "wrmsr_efer" and self._intercepted.get("EFER_WRITE_TRAP"):
            regs = vcpu.regs
            value = (regs.read(X.UC_X86_REG_RDX) & 0xFFFF_FFFF) << 32 | regs.read(X.UC_X86_REG_RAX) & 0xFFFF_FFFF
            if value & ~EFER_VALID:
                return False  # reserved bits: the engine's own #GP(0)
            value = value & ~EFER_LMA | vcpu.efer() & EFER_LMA  # LMA is the processor's
            regs_msr = vcpu.uc.reg_write
            regs_msr(X.UC_X86_REG_MSR, (MSR_EFER, value))
            vcpu.set_rip(rip + length)
            vcpu._exit(vcpu.vendor.instruction_exit("efer_write_trap", rip + length, 0, (value,)))
            return None
        return False

    def _inject(self) -> None:
        """EVENTINJ (15.20): an event the VMM asked for is delivered as the guest starts, through
        its IDT, and V is cleared (the processor reports a delivery it could not finish in
        EXITINTINFO, which is not modelled yet)."""
        if not self.vcpu.vm.host.read(self.vmcb.pa + _EVENTINJ_V, 1)[0] & 0x80:  # EVENTINJ.V (bit 31)
            return
        event = self.vmcb.eventinj
        self.vmcb.write("EVENTINJ", 0)
        vcpu = self.vcpu
        error = event.error_code if event.error_code_valid else None
        vcpu.activity_hlt = False
        rip, length = vcpu.rip(), 0
        if event.type == EVENTINJ_SOFT_INT or event.type == 3 and event.vector in (3, 4):
            # A software interrupt or the #BP / #OF of INT3 / INTO: with NRIP save the return
            # address pushed is the VMCB's NRIP (KVM: "next_rip is consumed on VMRUN as the
            # return address pushed on the stack for injected soft exceptions/interrupts"),
            # RIP staying at the instruction. hvsim's choice: NRIP 0 is a VMM written for
            # processors without NRIP save, which advanced RIP itself; RIP is pushed then.
            nrip = self.vmcb.read("NRIP")
            if nrip:
                length = nrip - rip if 0 < nrip - rip <= 15 else 0
                rip = nrip
        vcpu.deliver_event(event.vector, error, rip, software=event.type == EVENTINJ_SOFT_INT,
                           event_type=event.type, length=length)

    def vmexit(self) -> None:
        """Leaving the engine: the processor saves the guest state into the VMCB (15.6)."""
        self.save_guest_state()
        self.cpu.vmexit()

    def save_guest_state(self) -> None:
        """#VMEXIT's state save (15.6): the registers in one batched read from the engine, packed
        at their offsets; the segment, GDTR/IDTR and TR fields as byte runs prepared once per
        distinct state; then a copy of the page, against which the next VMRUN finds what the
        VMM wrote."""
        vcpu, vmcb, saved = self.vcpu, self.vmcb, self._saved
        regs = vcpu.regs
        batch = self._batch
        if batch is None:
            batch = self._batch = StateBatch(regs, _SAVED_REGS, _SAVED_MMRS)
            self._view = direct_view(vmcb.mem, vmcb.pa, VMCB_SIZE)  # bounds-checked once: host memory
        values, (gdtr, idtr, tr) = batch.read()
        for (name, _reg), value in zip(_LOADED_ON_VMRUN, values):
            saved[name] = value
        rax, rsp, rip, rflags, cr2, cr0, cr3, cr4, dr6, dr7, *selectors = values
        # INTERRUPT_SHADOW (offset 0x068 bit 0): the guest is in an STI / MOV SS shadow (15.21.5).
        self._shadow_saved = shadow = int(bool(vcpu.interruptibility() & SHADOW))
        state = (rax, rsp, rip, rflags, cr2, cr0 | (_CR0_PE_PG if self.shadow else 0), cr3, cr4,
                 vcpu.efer() | EFER_SVME,  # the guest's EFER.SVME is the VMM's, as KVM keeps it
                 dr6 | 0xFFFF0FF0, dr7 | 0x400,
                 selectors[1] & 3 if cr0 & 1 else 0)  # CPL: CS.RPL in protected mode (vcpu.cpl())
        key = (*selectors, cr0 & 1, cr3, gdtr, idtr, tr)
        runs = self._segment_state.get(key)
        if runs is None:
            runs = self._segment_state_of(key)
        view, base = self._view
        if view is None:  # not host memory: the checked writes
            write = vmcb.write
            for name, value in zip(_STATE_NAMES, state):
                write(name, value)
            write("INTERRUPT_SHADOW", shadow)
            for offset, data in runs:
                vmcb.mem.write(vmcb.pa + offset, data)
        else:
            for pack, offset, value in zip(_STATE_PACK, _STATE_OFFSETS, state):
                pack(view, base + offset, value)
            at = base + _SHADOW_OFFSET
            view[at] = view[at] & 0xFE | shadow
            for offset, data in runs:
                view[base + offset:base + offset + len(data)] = data
        self._page_after_exit = vmcb.page()

    def _segment_state_of(self, key: tuple) -> tuple[tuple[int, bytes], ...]:
        """(offset, bytes) runs of the segment, GDTR/IDTR and TR fields for a save key (kept: a
        hidden part is the descriptor's as of its load): ES..GS as one run of 96 bytes."""
        *selectors, pe, cr3, gdtr, idtr, _tr = key
        context = (gdtr[1:3], cr3) if pe else None
        block = bytearray(_SEG_BLOCK_SIZE)
        for (name, _reg), selector in zip(_SEGMENTS, selectors):
            s = self._segment(selector & 0xFFFF, context)
            for part, value in (("SELECTOR", s.selector), ("ATTRIB", s.attrib), ("LIMIT", s.limit), ("BASE", s.base)):
                f = FIELD[f"{name}_{part}"]
                block[f.offset - _SEG_BLOCK:f.offset - _SEG_BLOCK + f.width] = (value & f.mask).to_bytes(f.width, "little")
        fields = [("GDTR_LIMIT", gdtr[2]), ("GDTR_BASE", gdtr[1]), ("IDTR_LIMIT", idtr[2]), ("IDTR_BASE", idtr[1])]
        tr = self.vcpu.task_register()  # attributes: descriptor bits 47:40 and 55:52 (Table B-2)
        if tr is not None:
            fields += [("TR_SELECTOR", tr[0]), ("TR_ATTRIB", tr[3] | tr[4] << 8), ("TR_LIMIT", tr[2]), ("TR_BASE", tr[1])]
        runs = [(_SEG_BLOCK, bytes(block))]
        for name, value in fields:
            f = FIELD[name]
            runs.append((f.offset, (value & f.mask).to_bytes(f.width, "little")))
        if len(self._segment_state) > 64:
            self._segment_state.clear()
        self._segment_state[key] = result = tuple(runs)
        return result

    def _segment(self, selector: int, context: tuple | None = None) -> Segment:
        """VMCB segment: attributes are descriptor bits 47:40 and 55:52 (Table B-2)."""
        hidden = (self.vcpu.hidden_segment(selector) if context is None
                  else self.vcpu.hidden_segment_in(selector, context))
        if hidden is None:
            return Segment(selector, 0, 0, 0)
        base, limit, access, flags = hidden
        return Segment(selector, access | flags << 8, limit, base)


def _never(*_access) -> bool:
    return False
