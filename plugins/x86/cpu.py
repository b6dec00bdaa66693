"""The x86 vCPU: a Unicorn engine running guest code, with exits taken where the hardware takes them.

Shared by both vendors; the vendor half (:class:`hvsim.plugins.x86.vendor.X86Vendor`) records
each exit in its own format. Which guest events leave the engine and how (measured, see
docs/unicorn-notes.md):

- IN / OUT / CPUID: ``UC_HOOK_INSN``; completed inside the hook (no re-entry).
- VMCALL / VMMCALL and other invalid opcodes: ``UC_HOOK_INSN_INVALID``; the vendor's own
  hypercall instruction is an exit, anything else is #UD delivered to the guest.
- HLT: the engine returns with RIP after the HLT (the slice timer's flag tells it from a slice end).
- Pending events: taken at instruction boundaries in the manuals' order (:mod:`.events`); a
  blocked one is waited for with exact-address hooks on the few instructions that unblock it.
- CPU exceptions and INT n: ``UC_HOOK_INTR``; delivered through the guest's IDT (:mod:`.idt`).
- MMIO: ``mmio_map`` callbacks for every claimed range.
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import (UC_HOOK_INSN_INVALID, UC_HOOK_INTR, UC_HOOK_MEM_FETCH_UNMAPPED,
                     UC_HOOK_MEM_READ_UNMAPPED, UC_HOOK_MEM_WRITE_UNMAPPED, UC_PROT_ALL,
                     UC_PROT_READ, Uc, UcError)
from unicorn.unicorn_const import UC_ERR_EXCEPTION
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_ARCH_X86, UC_MODE_64

from hvsim.core.arch import Vcpu, VcpuState
from hvsim.core.handlers import handle_port_io
from hvsim.core.clock import EngineSlice
from hvsim.core.engine import INSN_IN_CB, INSN_OUT_CB, INSN_SKIP_CB, RawHooks, _emu_stop
from hvsim.plugins.x86.traps import _vmem_read
from hvsim.core.exits import EventType, Exit, ExitKind
from hvsim.core.memory import Access, GuestMemoryError
from hvsim.core.mmu import HOST_PHYS_BASE

from . import events as x86_events
from . import idt, layout, paging
from .boot import GDT_ENTRIES, SEL_CODE32, SEL_CODE64, SEL_DATA, BootState
from .decode import IoInsn, decode_io, undefined_instruction, writes_memory
from .handlers import handle_msr
from .operands import Operand, effective_address
from .quirks import ExceptionLatch
from .regs import X86Regs
from .mmu import MSR_EFER, UNTIL, GeneralProtection, PageFault, X86Mmu
from .tsc import guest_tsc
from .interruptibility import (BLOCKING_BY_MOV_SS, BLOCKING_BY_NMI, BLOCKING_BY_STI, SHADOW, InterruptShadow,
                               shadow_cause)
from .traps import SensitiveTraps, reg_id

MSR_IA32_APIC_BASE = 0x1B
MSR_IA32_TSC_AUX = 0xC000_0103
MSR_IA32_TSC_DEADLINE = 0x6E0
MASK64 = (1 << 64) - 1
APIC_BASE_DEFAULT = 0xFEE0_0000 | (1 << 11)  # enabled, xAPIC mode
APIC_BASE_BSP = 1 << 8
CR4_DE, CR4_PCE, CR4_UMIP, CR4_SMXE, CR4_OSXSAVE = 1 << 3, 1 << 8, 1 << 11, 1 << 14, 1 << 18
# Instruction exits whose record depends only on the instruction (not on register values)
_STATIC_RECORDS = frozenset({"mov_to_cr", "mov_from_cr", "mov_to_dr", "mov_from_dr", "clts", "smsw", "sgdt", "sidt",
                             "lgdt", "lidt", "sldt", "str", "lldt", "ltr", "rdtsc", "rdtscp", "wbinvd", "invd",
                             "pause", "xsetbv", "rdrand", "rdseed", "rdpmc", "pushf", "popf", "iret", "icebp",
                             "rdpru", "monitor", "getsec", "xsaves", "xrstors"})
_FAULT_CHECKED = frozenset({"xsetbv", "xsaves", "xrstors", "getsec", "mov_to_dr", "mov_from_dr", "rdpmc",
                            "monitor", "mwait", "sgdt", "sidt", "sldt", "str", "smsw"})
# Instructions that need CPL 0 (#GP(0) otherwise, checked before any intercept)
_PRIVILEGED = frozenset({"clts", "lmsw", "lgdt", "lidt", "lldt", "ltr", "invpcid", "wbinvd", "invd", "invlpg", "mov_to_cr", "mov_from_cr"})

_ACCESS_NAMES = {UC_HOOK_MEM_READ_UNMAPPED: "read from", UC_HOOK_MEM_WRITE_UNMAPPED: "write to",
                 UC_HOOK_MEM_FETCH_UNMAPPED: "instruction fetch from"}
_MEM_READ_UNMAPPED, _MEM_WRITE_UNMAPPED, _MEM_FETCH_UNMAPPED = 19, 20, 21
_NO_CONTROLS = x86_events.EventControls()
_MAX_VECTORING_DEPTH = 16  # nested exits for exceptions raised while delivering an event
STGI = b"\x0f\x01\xdc"
# General-purpose registers in the order exit qualifications number them (SDM Table 28-3).
_GPRS = [getattr(X, f"UC_X86_REG_{n}") for n in ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
                                                  "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")]


def _canonical(address: int, la57: bool = False) -> bool:
    """Bits 63:47 all equal (48-bit linear addresses), or 63:56 with CR4.LA57 (SDM 3.3.7.1)."""
    top = address >> (56 if la57 else 47)
    return top == 0 or top == (1 << (8 if la57 else 17)) - 1


class X86Vcpu(Vcpu):
    def __init__(self, vm, index: int, vendor, hv_area: int) -> None:
        super().__init__(vm, index)
        self.vendor = vendor
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        # Broadwell: the engine then knows STAC/CLAC and keeps CR4.SMAP (its default model masks
        # it), with separate TLBs for SMAP-checked and AC-lifted supervisor accesses (measured).
        uc.ctl_set_cpu_model(X.UC_CPU_X86_BROADWELL)
        self.regs = X86Regs(uc)
        # Host memory sits high in the engine's physical space; the MMU's fills (guest paging,
        # then EPT / NPT) point into it. MMIO ranges stay at their guest-physical addresses.
        uc.mem_map_ptr(HOST_PHYS_BASE, vm.host.size, UC_PROT_ALL, vm.host.ptr)
        self._io_decoded: dict[int, IoInsn] = {}  # by RIP; only the exit record depends on it
        self._io_records: dict[tuple, tuple[str, object]] = {}
        self._raw = RawHooks(uc)
        self._rbuf = ctypes.create_string_buffer(64)
        # handlers.handle_cpuid: the answers per (leaf, subleaf, CR4.OSXSAVE), each with its
        # one-call write of EAX..EDX; the exit reads RIP, EAX and ECX in one call too.
        self.cpuid_cache: dict[tuple[int, int, bool], tuple[tuple[int, int, int, int], object]] = {}
        self.cpuid_out = self.regs.batch((X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))
        self.cpuid_in = self.regs.batch((X.UC_X86_REG_RIP, X.UC_X86_REG_RAX, X.UC_X86_REG_RCX))
        self._segments: dict = {}  # hidden segment parts (hidden_segment)
        self.clock = vm.clock  # guest time: the host's, or virtual (deterministic mode)
        self._slice = EngineSlice(vm, self._raw._uch)
        self._dispatch = vm.dispatch
        self.mmu = X86Mmu(self, self._raw)
        # MSRs Unicorn cannot model (it has no APIC): RDMSR/WRMSR of these are trapped and exit.
        self.msrs = {MSR_IA32_APIC_BASE: APIC_BASE_DEFAULT | (APIC_BASE_BSP if index == 0 else 0)}
        # IA32_TSC_DEADLINE: the VMM's APIC model (vcpu.lapic, plugins/devices/lapic.py) answers it.
        self.msrs[MSR_IA32_TSC_DEADLINE] = 0
        self.lapic = None
        self.apic_wait = False  # halted with the APIC timer armed: run() waits for it
        self.sipi_vector: int | None = None  # a start-up IPI's vector, taken at the next entry
        self._traps = SensitiveTraps(uc, self.regs, self.code_bits, self._on_sensitive, self._reenter)
        self.context = vendor.attach(self, hv_area)  # the VMCB / VMCS this vCPU runs through
        # The x2APIC MSRs, added after the MSR bitmap / MSRPM was filled: unless the VMM
        # intercepts them (or virtualizes x2APIC mode) the APIC model answers without an exit.
        self.msrs.update(dict.fromkeys(range(0x800, 0x900), 0))
        self._record = self.context.record if self.context is not None else None
        self._after_exit = getattr(self.context, "after_exit", None)
        for claim in vm.bus.mmio_claims:
            self._map_mmio(claim.base, claim.size)
        on_out, on_in, on_cpuid = self._make_io_hooks()
        # CPUID's first: the engine's CPUID walks every UC_HOOK_INSN hook in the order they were
        # added and gives up at the first entry it finds with a stop pending, before it reaches
        # a later CPUID hook, and then answers with its own CPU model (measured: a slice that
        # ended just before a CPUID gave the guest "GenuineIntel" on amd_svm). IN and OUT call
        # their hooks whatever is pending.
        self._raw.add_insn(INSN_SKIP_CB, on_cpuid, X.UC_X86_INS_CPUID)
        self._raw.add_insn(INSN_OUT_CB, on_out, X.UC_X86_INS_OUT)
        self._raw.add_insn(INSN_IN_CB, on_in, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED,
                    self._on_unmapped)
        self._latch = ExceptionLatch(uc)
        # Interruptibility (plugins/x86/interruptibility.py) and event windows (events.py).
        self._shadow = InterruptShadow(uc)
        self._watch = x86_events.WindowWatch(uc, self.regs, self.code_bits, self._reenter)
        self.blocking = 0  # interruptibility at the last boundary looked at (SDM Table 24-3 bits)
        self.nmi_blocked = False  # blocking by NMI: from NMI delivery to the next IRET (SDM 6.7.1)
        self.iret_unblocked_nmi = False  # while an IRET that ended blocking by NMI executes
        self.mtf_pending = False
        self.smis_taken = 0  # SMIs SMM took without an exit (events.boundary)
        self._hlt_at: int | None = None  # the HLT the engine was about to execute in this stay
        self._task_step: int | None = None  # a task switch the run loop executes alone (RIP)
        self.activity_hlt = False  # halted by a HLT the VMM does not intercept (activity state HLT)
        self.timer_deadline: float | None = None  # VMX-preemption timer expiry (self.clock, seconds)
        self._in_engine = False
        self._recheck = False  # a hook stopped the engine so the next boundary is looked at
        self._restart = False  # a hook outside a block moved RIP: leave the engine, enter it again
        self._vectoring_depth = 0
        self._delivered = 0
        self._shadow_set: tuple[int, int] | None = None  # (RIP, cause) of a shadow a VM entry loaded
        self._stopping = False
        self._unmapped: tuple[int, int, int, int] | None = None
        self._lazy_mmio: set[int] = set()  # unbacked pages made MMIO on first touch (map_lazy)
        self._hypercall = vendor.hypercall_insn
        self.monitor_armed = False  # address-range monitoring armed by an emulated MONITOR
        self._insn_records: dict[tuple, tuple[str, object]] = {}

    # -- engine set-up ---------------------------------------------------------------------
    def _map_mmio(self, base: int, size: int) -> None:
        vendor, exit_, fail = self.vendor, self._exit, self._raw.fail

        # The engine does not sync RIP before an MMIO callback (it reads as the start of the
        # translation block), so the record leaves the guest RIP out rather than get it wrong.
        def read(_uch, offset, size_, _ud):
            try:
                exit = vendor.mmio_exit(base + offset, size_, False, None, None)
                exit_(exit)
                return exit.value or 0
            except BaseException as exc:
                fail(exc)
                return 0

        def write(_uch, offset, size_, value, _ud):
            try:
                exit_(vendor.mmio_exit(base + offset, size_, True, value, None))
            except BaseException as exc:
                fail(exc)

        self._raw.mmio_map(base, size, read, write)

    def map_lazy(self, page: int) -> None:
        """Make one page no RAM or device backs MMIO, once: a later fill of the same page (the
        engine's TLB dropped it) finds it mapped already, and mapping it again would fail."""
        if page not in self._lazy_mmio:
            self._map_mmio(page, 0x1000)
            self._lazy_mmio.add(page)

    def set_boot_state(self, state: BootState) -> None:
        """Put the engine in the boot CPU mode, then start at the loader stub (boot.BootState)."""
        w = self.uc.reg_write
        if state.mode == "protected32":
            # EFER <- 0, then CR0 through PG and back: that takes the engine out of its default
            # long mode into 32-bit protected mode with paging off (measured).
            w(X.UC_X86_REG_MSR, (MSR_EFER, 0))
            w(X.UC_X86_REG_CR0, 0x8000_0011)
            w(X.UC_X86_REG_CR0, 0x11)
            w(X.UC_X86_REG_CR4, 0)
        else:
            w(X.UC_X86_REG_CR3, state.regs["cr3"])
            w(X.UC_X86_REG_CR4, paging.CR4_PAE)
            w(X.UC_X86_REG_MSR, (MSR_EFER, 0x500))  # LME | LMA
            w(X.UC_X86_REG_CR0, 0x8000_0011)
        # Selector values only (the engine keeps its descriptor caches until the stub loads them
        # for real); they make the state a VMCS / VMCB reports before the first instruction
        # name the GDT's descriptors.
        # (a boot protocol with other selectors, Linux's, names them in ``state.regs``)
        gdt_limit = state.regs.get("gdt_limit", len(GDT_ENTRIES) * 8 - 1)
        w(X.UC_X86_REG_GDTR, (0, layout.BOOT_GDT, gdt_limit, 0))  # the stub reloads it
        w(X.UC_X86_REG_CS, state.regs.get("cs", SEL_CODE32 if state.mode == "protected32" else SEL_CODE64))
        for r in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
            w(r, state.regs.get("ds", SEL_DATA))
        w(X.UC_X86_REG_RFLAGS, 0x2)
        w(X.UC_X86_REG_RIP, layout.BOOT_STUB)

    def start_up(self, vector: int, signature: int = 0) -> None:
        """The state INIT then a start-up IPI give an AP (SDM 9.4.4, Table 9-1; KVM's
        kvm_vcpu_deliver_sipi_vector): real mode, CS = vector << 8 with base vector << 12, IP 0,
        CR0 0x6000_0010, EFER 0, GDTR / IDTR base 0 limit 0xFFFF, EDX the processor signature,
        the other general-purpose registers 0. Reached by the few real instructions of
        ``boot.sipi_stub`` (real mode cannot be set by register writes in the engine)."""
        from .boot import SIPI_STUB, sipi_stub

        mem, uc, w = self.vm.memory, self.uc, self.uc.reg_write
        stub, entry, real = sipi_stub(vector)
        saved = mem.read(SIPI_STUB, len(stub))
        target = (vector & 0xFF) << 12
        w(X.UC_X86_REG_MSR, (MSR_EFER, 0))
        w(X.UC_X86_REG_CR0, 0x8000_0011)
        w(X.UC_X86_REG_CR0, 0x11)
        w(X.UC_X86_REG_CR4, 0)
        w(X.UC_X86_REG_CS, SEL_CODE32)
        for r in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS):
            w(r, SEL_DATA)
        w(X.UC_X86_REG_RFLAGS, 0x2)
        mem.write(SIPI_STUB, stub)
        self.mmu.context_changed()

        def run_to(start: int, until: int) -> bool:
            # Every code segment the stub runs in has base 0 until its last far jump, which
            # lands on ``until`` (CS = vector << 8, IP 0): the engine's stop address, linear.
            pc = start
            for _ in range(8):  # the trap scanners may end a stay at a new block's start
                self.mmu.pending = None
                uc.emu_start(pc, until)
                pc = self.regs.read(X.UC_X86_REG_RIP)
                if pc == until or (pc == 0 and uc.reg_read(X.UC_X86_REG_CS) == until >> 4):
                    return True
            return False

        try:
            uc.ctl_remove_cache(SIPI_STUB, SIPI_STUB + len(stub))
            uc.ctl_remove_cache(target, target + 1)
            ok = run_to(entry, real)
            if ok:
                w(X.UC_X86_REG_CR0, 0x10)  # PE <- 0: real mode, the 16-bit segment caches stay
                self.mmu.context_changed()
                ok = run_to(real, target)
        finally:
            mem.write(SIPI_STUB, saved)
            uc.ctl_remove_cache(SIPI_STUB, SIPI_STUB + len(stub))
            uc.ctl_remove_cache(target, target + 1)
            self._restart = self._recheck = False
        if not ok:
            self.vm.crash(f"vCPU {self.index}: the start-up sequence for SIPI vector {vector:#x} did not reach it")
            return
        w(X.UC_X86_REG_CR0, 0x6000_0010)
        for r in _GPRS:
            w(r, 0)
        w(X.UC_X86_REG_RDX, signature)
        w(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
        w(X.UC_X86_REG_IDTR, (0, 0, 0xFFFF, 0))
        w(X.UC_X86_REG_RFLAGS, 0x2)
        self.mmu.context_changed()
        self.events.clear()
        self.activity_hlt = self.nmi_blocked = self.mtf_pending = False
        self.apic_wait = False
        self._shadow_set = None

    # -- the run loop's side ---------------------------------------------------------------
    def run(self, slice_us: int) -> Exit | None:
        if self.sipi_vector is not None:  # started by a SIPI since it last ran
            vector, self.sipi_vector = self.sipi_vector, None
            self.start_up(vector, self.vendor.cpuid_leaf(1, 0, self.index, len(self.vm.vcpus))[0])
            if self.vm.status is not None:
                return None
        if self.apic_wait and not self._apic_wait(slice_us):
            return None  # still halted, waiting for the APIC timer
        self._stopping = False
        self._unmapped = None
        context = self.context
        if context is not None:
            failed = context.vmrun()
            if failed:
                self._exit(self.vendor.invalid_exit(failed))
                return None
        self.mmu.context_changed()
        ctl = context.event_controls if context is not None else _NO_CONTROLS
        regs, uc, watch = self.regs, self.uc, self._watch
        clock = self.clock
        end = clock.now() + slice_us / 1e6
        lapic = self.lapic
        exit = None
        halted = False
        try:
            if self.activity_hlt:  # in the HLT activity state: only an event wakes it
                before = self._delivered
                exit = x86_events.boundary(self, ctl)
                if exit is None and self._delivered == before:
                    exit = self._halt_until_timer(end)
                    if exit is None:
                        if self.timer_deadline is None:
                            self.halt()
                        return None
                if self._delivered != before:
                    self.activity_hlt = False  # delivered: the guest runs its handler
                # An exit leaves the guest halted: the activity state saved is HLT (SDM 28.3.4).
            while exit is None and not self._stopping and self.vm.status is None:
                step, watching = False, frozenset()
                if lapic is not None and lapic.deadline_ns is not None and clock.now_ns() >= lapic.deadline_ns:
                    lapic.poll_timer()  # the APIC timer fired: its interrupt is looked at below
                if self.events or ctl.active or self.mtf_pending or self.nmi_blocked or self.timer_deadline:
                    before = self._delivered
                    exit = x86_events.boundary(self, ctl)
                    if exit is not None or self._stopping or self.vm.status is not None:
                        break
                    if self._delivered != before:
                        if ctl.mtf:  # MTF exit before the handler's first instruction (SDM 25.5.2)
                            self.mtf_pending = True
                        continue  # an event was delivered: look again at the handler's first boundary
                    step, watching = x86_events.waiting(self, ctl)
                watch.arm(watching)
                rip = regs.read(X.UC_X86_REG_RIP)
                if step:
                    halted = self._step(rip)
                    if ctl.mtf:
                        self.mtf_pending = True
                    if halted:
                        break
                    continue
                now = clock.now()
                remaining = int((end - now) * 1e6)
                if self.timer_deadline is not None:
                    remaining = min(remaining, int((self.timer_deadline - now) * 1e6) + 1)
                if lapic is not None and lapic.deadline_ns is not None:  # the slice ends at the APIC timer
                    remaining = min(remaining, max(1, (lapic.deadline_ns - clock.now_ns()) // 1000 + 1))
                if remaining <= 0:
                    if self.timer_deadline is not None and self.timer_expired():
                        continue  # the timer's exit is taken at this boundary
                    break
                pc = rip
                if not self.cr0() & 1:  # real mode: the engine's blocks are at linear addresses
                    pc += regs.read(X.UC_X86_REG_CS) << 4  # (an AP started by SIPI: CS = vector << 8)
                if self.mmu.fetchable(pc):  # Unicorn's translation-cache request crashes on a fault
                    self._traps.prescan(pc)
                    watch.prescan(pc)
                self.mmu.pending = None
                self._in_engine = True
                self._restart = False
                self._hlt_at = None
                self._slice.arm(remaining / 1e6)
                fault = None
                try:
                    uc.emu_start(rip, UNTIL)
                except UcError as exc:
                    fault = self.mmu.take_pending()
                    if fault is None or exc.errno != UC_ERR_EXCEPTION:
                        raise
                finally:
                    self._slice.disarm()
                    self._in_engine = False
                self._raw.reraise()
                if fault is not None:  # a fill the MMU refused: the fault is taken, the guest goes on
                    self._take_fault(fault)
                    continue
                if self.mmu.engine.service():
                    continue  # stopped only so the engine's TLB could grow
                if watch.hit is not None:
                    at, watch.hit = watch.hit, None
                    if watch.is_iret(at) and self.nmi_blocked:
                        # IRET ends blocking by NMI (SDM 6.7.1), before it can fault: an exit
                        # for its fault says so ("NMI unblocking due to IRET", SDM 28.2.3)
                        self.nmi_blocked = False
                        self.iret_unblocked_nmi = True
                    try:
                        halted = self._step(at)
                    finally:
                        self.iret_unblocked_nmi = False
                    if halted:
                        break
                    continue
                if self._task_step is not None:
                    at = self._task_step
                    try:
                        halted = self._step(at)
                    finally:
                        self._task_step = None
                        self.mmu.tlb.invalidate(self.mmu.tag)
                        self.mmu.context_changed()
                    if halted:
                        break
                    continue
                if self._stopping or self.vm.status is not None:
                    break
                if self._recheck:
                    self._recheck = False
                    self.mmu.context_changed()  # a hook may have changed CR0/CR3/CR4 behind the MMU
                    continue
                if self._restart:
                    continue  # (_reenter) a hook moved RIP outside a block: the guest goes on there
                at = regs.read(X.UC_X86_REG_RIP)
                # The slice ran out, unless the stop landed in a block that ended with a HLT the
                # guest executed (its trap hook saw it: RIP is right after it).
                hlt_ran = self._hlt_at is not None and at == self._hlt_at + 1
                if self._slice.expired and not hlt_ran:
                    if self.timer_deadline is not None and self.timer_expired():
                        continue
                    if lapic is not None and lapic.deadline_ns is not None and clock.now_ns() >= lapic.deadline_ns:
                        continue
                    break
                if watch._read(at, 3) == STGI:
                    self._stgi(at)  # the engine stops before STGI without running it (measured)
                    continue
                halted = True
                break
        except UcError as exc:
            self._engine_error(exc)
            return None
        except GuestMemoryError as exc:
            self.vm.crash(str(exc))
            return None
        finally:
            self._in_engine = False
            watch.hit = None
            if halted and context is not None and not context.hlt_exits:
                self.activity_hlt = True
            if context is not None:
                context.vmexit()
        if exit is not None:
            if self._record is not None:
                self._record(exit.raw)
            return exit
        if not halted or self._stopping or self.vm.status is not None:
            return None
        if context is not None and not context.hlt_exits:
            exit = self._halt_until_timer(end)  # HLT runs in the guest: no exit, wait for an event
            if exit is not None:
                if self._record is not None:
                    self._record(exit.raw)
                return exit
            if self.timer_deadline is None:
                self.halt()
            return None
        exit = self.vendor.hlt_exit(self.regs.read(X.UC_X86_REG_RIP))
        if self._record is not None:
            self._record(exit.raw)
        return exit

    def _take_fault(self, fault: Exception) -> None:
        """A translation the MMU refused: a guest #PF (SDM 4.7: CR2 = the linear address), or a
        stage-2 fault, which is a VM exit the VMM handles before the instruction is retried."""
        rip = self.regs.read(X.UC_X86_REG_RIP)
        if isinstance(fault, GeneralProtection):
            self.guest_exception(idt.GP, 0, rip)
            return
        if isinstance(fault, PageFault):
            if self._stale_paging_context():
                return  # the instruction is retried, walked with the registers it has now
            fault.address = self.mmu.exact_address(fault.address, bool(fault.error_code & paging.PFEC_I))
            self.guest_exception(idt.PF, fault.error_code, rip, fault.address)
            return
        if fault.gla is not None:
            gla = self.mmu.exact_address(fault.gla, fault.fetch and not fault.walk)
            if not fault.walk:  # the final translation: the byte's guest-physical address
                fault.gpa = (fault.gpa & ~0xFFF) | (gla & 0xFFF)
            fault.gla = gla
        context = self.context
        if context is not None:
            context.vmexit()
        exit = self.vendor.stage2_exit(fault, rip)
        if self.iret_unblocked_nmi:
            self.vendor.nmi_unblocked_by_iret(exit)
        self._exit(exit)
        if context is not None:
            context.resume_state()

    stale_paging_contexts = 0

    def _stale_paging_context(self) -> bool:
        """A #PF found with the MMU's cached CR0 / CR3 / CR4 not the engine's: some write of
        them reached the engine without the MMU seeing it (seen in Linux's text_poke, which
        switches CR3 to its poking mm: a write to a mapped page faulted, the walk had used the
        previous CR3; the cause is not found yet). The fault is not the guest's: every
        translation of the tag is dropped (as a MOV to CR4 that changes paging controls does)
        and the instruction retried; counted in ``stale_paging_contexts``."""
        ctx = self.mmu._ctx
        if ctx is None:
            return False
        r = self.regs.read
        if (ctx[0], ctx[1], ctx[2]) == (r(X.UC_X86_REG_CR0), r(X.UC_X86_REG_CR3), r(X.UC_X86_REG_CR4)):
            return False
        self.mmu.tlb.invalidate(self.mmu.tag)
        self.mmu.context_changed()
        self.stale_paging_contexts += 1
        return True

    def halt(self) -> None:
        """HLT with nothing deliverable: halted, or with the APIC timer armed, waiting for it
        in :meth:`_apic_wait` (the vCPU stays RUNNABLE so the run loop comes back to it)."""
        lapic = self.lapic
        if lapic is not None and lapic.deadline_ns is not None:
            self.state = VcpuState.RUNNABLE
            self.apic_wait = True
        else:
            self.state = VcpuState.HALTED

    def _apic_wait(self, slice_us: int) -> bool:
        """Halted with the APIC timer armed: True when an interrupt the guest can take ends
        the halt, else sleep toward the timer's deadline (at most one slice) unless another
        vCPU can run."""
        lapic = self.lapic
        lapic.poll_timer()
        if self.events and self.deliver_pending():
            self.apic_wait = False
            return True
        if lapic.deadline_ns is None:
            self.apic_wait = False
            if not self.events or not self.deliver_pending():
                self.state = VcpuState.HALTED
            return False
        others = any(v is not self and v.state is VcpuState.RUNNABLE and not getattr(v, "apic_wait", False)
                     for v in self.vm.vcpus)
        if not others:
            self.clock.wait_until_ns(min(lapic.deadline_ns, self.clock.now_ns() + slice_us * 1000))
            lapic.poll_timer()
        if self.events and self.deliver_pending():
            self.apic_wait = False
            return True
        return False

    def apic_timer_changed(self) -> None:
        """The APIC timer was armed while the guest runs: the slice ends by its deadline."""
        if self._in_engine:
            self._recheck = True
            self.uc.emu_stop()

    def apic_base_changed(self, base: int) -> None:
        """IA32_APIC_BASE moved the xAPIC page: accesses there become MMIO in this engine."""
        if not self.vm.memory.is_ram(base) and self.vm.bus.mmio(base) is None:
            self.map_lazy(base)

    def _halt_until_timer(self, end: float) -> Exit | None:
        """Halted with the VMX-preemption timer running: it keeps counting in the HLT state
        (SDM 25.5.1), so wait for it (within this slice) and exit when it reaches 0."""
        if self.timer_deadline is None:
            return None  # (an event that could wake the guest was taken at the boundary before)
        self.clock.wait_until_ns(int(min(self.timer_deadline, end) * 1e9))  # SIGINT ends it
        if not self.timer_expired():
            return None
        return self.context.event_exit("preemption_timer")

    def _stgi(self, rip: int) -> None:
        """STGI: Unicorn accepts it (its CPU model has SKINIT) but leaves the engine with RIP at
        it (measured): taken here as the instruction it is (an exit if intercepted, APM 15.9;
        V_GIF with virtual GIF; else #UD, as for any SVM instruction the guest is not shown)."""
        if self._on_instruction("stgi", rip, 3, (), undefined=True) is True:
            self.regs.write(X.UC_X86_REG_RIP, rip + 3)

    def _step(self, rip: int) -> bool:
        """Execute the one instruction at ``rip`` (an event may be taken right after it);
        True if it was HLT, which leaves the engine halted with RIP after it."""
        code = self._watch._read(rip, 16) or b""
        is_hlt = code[:1] == b"\xf4"
        self._traps.prescan(rip)
        bits = self.code_bits()
        until, shadow = x86_events.fallthrough(code, rip, bits)
        if shadow == BLOCKING_BY_STI and self.rflags() & idt.RFLAGS_IF:
            shadow = 0  # STI with IF already 1 starts no shadow (SDM 6.8.3)
        iret_to = None
        if until is None and bits == 64:
            iret_to = until = self._iretq_target(code)
            if until == rip:
                iret_to = until = None
        self._watch.stepping = True
        self._in_engine = True
        try:
            # The engine checks a stop address only while translating: the blocks at RIP and
            # at the stop address must be translated again for this step (measured: cached
            # ones run past it); likewise for the count hook.
            self.uc.ctl_remove_cache(rip, rip + 1)
            if until is not None and bits == 64:
                self.uc.ctl_remove_cache(until, until + 1)
                self.mmu.pending = None
                if iret_to is not None:  # should IRETQ fault into a handler, the slice still ends
                    self._slice.arm(0.01)
                try:
                    self.uc.emu_start(rip, until)  # stops exactly there
                finally:
                    if iret_to is not None:
                        self._slice.disarm()
                if shadow:
                    self._shadow.set(True)
                    self._shadow_set = (until, shadow)
            else:
                # A branch (or not 64-bit code, where the engine's stop address is linear):
                # count one instruction. Unicorn counts with a code hook that blocks translated
                # before it existed lack, so drop the block at RIP first (measured); going back
                # to uncounted execution, Unicorn flushes its whole translation cache.
                self.uc.emu_start(rip, UNTIL, count=1)
        except UcError as exc:  # the step's access faulted: taken like any other fault
            fault = self.mmu.take_pending()
            if fault is None or exc.errno != UC_ERR_EXCEPTION:
                raise
            self._in_engine = False
            self._take_fault(fault)
            return False
        finally:
            self._in_engine = False
            self._watch.stepping = False
            self._watch.hit = None
        self._raw.reraise()
        return is_hlt and self.regs.read(X.UC_X86_REG_RIP) == rip + 1

    def _iretq_target(self, code: bytes) -> int | None:
        """For IRETQ in 64-bit code returning to the same code segment: the RIP it pops (SDM Vol. 2A
        IRET: RIP, CS, RFLAGS, RSP, SS from the stack), so that the step can stop there with
        ``until``. Counting one instruction instead flushes the engine's whole translation
        cache when uncounted execution resumes: a Linux boot steps an IRETQ after most
        interrupts that arrive in a handler, and retranslated its kernel each time."""
        if code[:2] != b"\x48\xcf":
            return None
        try:
            rip, cs = struct.unpack("<QQ", self.read_linear(self.regs.read(X.UC_X86_REG_RSP), 16))
        except (GuestMemoryError, idt.DeliveryFault):
            return None
        cs &= 0xFFFF
        if cs != self.regs.read(X.UC_X86_REG_CS):
            # Only returns to the same code segment: one to user mode made the engine look up
            # the stop address's page while still at CPL 0 (measured: a spurious SMEP #PF on
            # Linux's first return to /init), so it is counted as before.
            return None
        return rip

    def _reenter(self) -> None:
        """End this stay in the engine; the run loop enters it again where RIP is. The trap
        scanners' edge hooks call it for a block translated before its trap sites existed: the
        engine leaves before that stale block runs, RIP at its start.

        Hooks outside a block that move RIP (a hypercall skipped from the invalid-opcode hook,
        an exception or INT n delivered from the interrupt hook) stay in the engine. On the
        stock engine such a RIP write left Unicorn's skip_sync_pc_on_exit mark set, and the next
        slice stop left with the RIP of an instruction already run, which ran again (a bare
        engine: 10,064 of 19,703 stops after a skipped VMCALL re-ran the CPUID after it; the
        guest saw leaf 0xD). hvsim's engine clears the mark whenever cpu_exec returns (patch
        level 3). It can still drop a slice stop that arrives while it resumes after such a write
        (measured: 11 in 100,000 SVM hypercalls); the slice timer asks again until the engine has
        left (core/engine.SliceTimer). Leaving after each such write instead cost a hypercall
        exit ~40 us against ~15 us (measured under load)."""
        self._restart = True
        _emu_stop(self._raw._uch)

    def recheck(self) -> None:
        """Something the guest just did may make a pending event deliverable: the engine stops
        at the end of its block and the next boundary is looked at."""
        self._recheck = True
        self.uc.emu_stop()

    def inject(self, event) -> None:
        """Queue ``event``; raised while the guest runs (a device in an exit handler), the engine
        stops at the end of its block so the event is looked at from that boundary on."""
        self.events.append(event)
        if self._in_engine:
            self._recheck = True
            self.uc.emu_stop()

    def interruptibility(self) -> int:
        """Blocking by STI / MOV SS / NMI at this boundary, as GUEST_INTERRUPTIBILITY_INFO bits."""
        blocking = BLOCKING_BY_NMI if self.nmi_blocked else 0
        if self._shadow.active():
            rip = self.regs.read(X.UC_X86_REG_RIP)
            if self._shadow_set is not None and self._shadow_set[0] == rip:
                self.blocking = blocking | self._shadow_set[1]  # the VMM's own, still unexecuted
                return self.blocking
            try:
                before = self.read_linear(self.segment_base("cs") + rip - 2, 2)
            except (GuestMemoryError, idt.DeliveryFault):
                before = b""
            cause = shadow_cause(before, self.long_mode())
            if cause == BLOCKING_BY_STI and not self.rflags() & idt.RFLAGS_IF:
                cause = BLOCKING_BY_MOV_SS  # an STI shadow has IF = 1 (SDM 26.3.1.5): it was MOV SS
            blocking |= cause
        self.blocking = blocking
        return blocking

    def set_interruptibility(self, blocking: int) -> None:
        """What a VM entry / VMRUN loads: the shadow for the first instruction, NMI blocking."""
        self._shadow.set(bool(blocking & SHADOW))
        self._shadow_set = (self.regs.read(X.UC_X86_REG_RIP), blocking & SHADOW) if blocking & SHADOW else None
        self.nmi_blocked = bool(blocking & BLOCKING_BY_NMI)
        self.blocking = blocking

    def timer_expired(self) -> bool:
        return self.timer_deadline is not None and self.clock.now() >= self.timer_deadline

    def _exit(self, exit: Exit) -> None:
        """Record ``exit`` in the vendor's structure (VMCB / VMCS), then handle it."""
        if self._record is not None:
            self._record(exit.raw)
        self._dispatch(self, exit)
        if self._after_exit is not None:
            self._after_exit()  # VMCS fields a VMM wrote that take effect without a re-entry

    def request_stop(self) -> None:
        # Takes effect at the end of the current translation block (Unicorn checks the stop
        # request between blocks), so an instruction after an OUT to isa-debug-exit may still
        # run; guests end with OUT then HLT, as real kernels do.
        self._stopping = True
        self.uc.emu_stop()

    def _engine_error(self, exc: UcError) -> None:
        if self.vm.status is not None:
            return
        if self._unmapped is not None:
            kind, address, size, _value = self._unmapped
            self.vm.crash(f"{_ACCESS_NAMES.get(kind, 'access to')} guest-physical {address:#x} "
                          f"(size {size}), which no RAM or device backs, at RIP {self.rip():#x}")
        else:
            self.vm.crash(f"the engine stopped: {exc} at RIP {self.rip():#x}")

    # -- hooks: exits completed inside the engine ------------------------------------------
    def _io_insn(self, rip: int) -> IoInsn:
        """The I/O instruction at RIP (the engine reports IN/OUT with RIP at the instruction)."""
        insn = self._io_decoded.get(rip)
        if insn is None:
            try:
                code = self.read_linear(self.segment_base("cs") + rip, 15)
            except (GuestMemoryError, idt.DeliveryFault):
                code = b""
            bits = 64 if self.long_mode() else (32 if self.cr0() & 1 else 16)
            insn = decode_io(code, bits) or IoInsn(1, False, False, False, bits, 3)
            self._io_decoded[rip] = insn
        return insn

    def _io_record(self, rip: int, port: int, size: int, is_in: bool) -> tuple[str, object]:
        """The vendor's (reason, record) for this I/O instruction; records are shared values."""
        i = self._io_insn(rip)
        exit = self.vendor.io_exit(port, size, is_in, None, rip, i.length, i.immediate, i.string, i.rep,
                                   i.address_size, i.segment)
        return exit.reason, exit.raw

    def _make_io_hooks(self):
        """IN/OUT/CPUID hooks as C-level callbacks closing over locals: these are the hottest
        exit paths (measured: ~1.3 us saved per exit against the binding's wrappers and
        attribute look-ups)."""
        read, rip_id, dispatch, records = self.regs.read, X.UC_X86_REG_RIP, self.vm.dispatch, self._io_records
        record, kind, fail = self._io_record, ExitKind.PORT_IO, self._raw.fail
        cpuid_exit, vmcb = self.vendor.cpuid_exit, self._record
        context, passthrough = self.context, handle_port_io

        def on_out(_uch, port, size, value, _ud):
            try:
                check = context.io_check if context is not None else None
                if check is not None and not check(port, size):  # not intercepted: no exit
                    return passthrough(self, Exit(kind, "", None, port, size, True, value))
                rip = read(rip_id)
                rec = records.get((rip, port, size))
                if rec is None:
                    rec = records[(rip, port, size)] = record(rip, port, size, False)
                if vmcb is not None:
                    vmcb(rec[1])
                dispatch(self, Exit(kind, rec[0], rec[1], port, size, True, value))
            except BaseException as exc:
                fail(exc)

        def on_in(_uch, port, size, _ud):
            try:
                check = context.io_check if context is not None else None
                if check is not None and not check(port, size):
                    exit = Exit(kind, "", None, port, size, False, None)
                    passthrough(self, exit)
                    return exit.value
                rip = read(rip_id)
                rec = records.get((rip, port, size, True))
                if rec is None:
                    rec = records[(rip, port, size, True)] = record(rip, port, size, True)
                if vmcb is not None:
                    vmcb(rec[1])
                exit = Exit(kind, rec[0], rec[1], port, size, False, None)
                dispatch(self, exit)
                return exit.value if exit.value is not None else (1 << (8 * size)) - 1
            except BaseException as exc:
                fail(exc)
                return 0

        cpuid_records: dict[int, Exit] = {}
        cpuid_in = self.cpuid_in.read

        def on_cpuid(_uch, _ud):
            if context is not None and not context.cpuid_exits:
                return 0  # not intercepted: the engine's own CPUID answers
            try:
                rip, rax, rcx = cpuid_in()
                rec = cpuid_records.get(rip)  # the record is the same at every CPUID there
                if rec is None:
                    rec = cpuid_records[rip] = cpuid_exit(rip)
                exit = Exit(rec.kind, rec.reason, rec.raw, rax & 0xFFFF_FFFF, rcx & 0xFFFF_FFFF)
                if vmcb is not None:
                    vmcb(exit.raw)
                dispatch(self, exit)
            except BaseException as exc:
                fail(exc)
            return 1  # skip the engine's own CPUID: the handler wrote EAX..EDX

        return on_out, on_in, on_cpuid

    def _on_invalid(self, uc, _ud):
        rip = self.regs.read(X.UC_X86_REG_RIP)
        try:
            code = self.read_linear(self.segment_base("cs") + rip, 15)
        except (GuestMemoryError, idt.DeliveryFault):
            code = b""
        if code[:3] == self._hypercall:
            self._exit(self.vendor.hypercall_exit(rip))
            if self.vm.status is None:
                self.regs.write(X.UC_X86_REG_RIP, rip + 3)
            return True
        insn = undefined_instruction(code, self.code_bits(), rip)
        if insn is not None:
            kind, length, ops = insn
            if self._on_instruction(kind, rip, length, ops, undefined=True) is True:
                self.regs.write(X.UC_X86_REG_RIP, rip + length)
            return True
        self.guest_exception(6, None, rip)  # #UD
        return True

    def _on_intr(self, uc, intno, _ud):
        rip = self.regs.read(X.UC_X86_REG_RIP)
        error_code = None
        if intno == idt.PF:
            error_code = self._page_fault_error_code(rip)
        elif intno in idt.ERROR_CODE_VECTORS:
            error_code = 0  # Unicorn does not expose the error code; 0 is right for most #GP
        if intno in (3, 4) and self._byte_before(rip) == (0xCC if intno == 3 else 0xCE):
            # INT3 / INTO: a software exception (interruption type 6), a trap RIP is past
            self.guest_exception(intno, None, rip, length=1)
            return
        if intno >= 32 or intno != 1 and self._int_n(rip, intno):
            # INT n (INT 3 encoded CD 03 too): a software interrupt, no error code, gate DPL
            # checked (RIP is past it); no exception bitmap or intercept applies to it
            context = self.context
            if context is not None and context.intercepts("intn", intno):
                self.regs.write(X.UC_X86_REG_RIP, rip - 2)  # intercepts come before execution
                exit = self.vendor.instruction_exit("intn", rip - 2, 2, (intno,))
                self._exit(exit)
                if exit.value is True:
                    self.regs.write(X.UC_X86_REG_RIP, rip)
                    return
            self.deliver_event(intno, None, rip, software=True, length=2)
        else:
            self.guest_exception(intno, error_code, rip)

    def _code_before(self, rip: int, n: int) -> bytes:
        """The ``n`` code bytes before ``rip`` (empty if unreadable): the engine reports traps
        and software interrupts with RIP past the instruction that raised them."""
        try:
            return self.read_linear(self.segment_base("cs") + rip - n, n)
        except (GuestMemoryError, idt.DeliveryFault):
            return b""

    def _byte_before(self, rip: int) -> int | None:
        code = self._code_before(rip, 1)
        return code[0] if code else None

    def _int_n(self, rip: int, intno: int) -> bool:
        """Whether the interrupt the engine reported below 32 came from INT n (CD ib)."""
        return self._code_before(rip, 2) == bytes((0xCD, intno))

    def _on_instruction(self, kind: str, rip: int, length: int, info, undefined: bool = False) -> bool | None:
        """A sensitive instruction about to execute: the architectural faults that come before
        any intercept (SDM 26.1.1, APM 15.7.1), then an exit if the VMM's controls intercept
        it; without one, or when the VMM did not emulate it, the vendor context may complete it
        (``passthrough``), else it runs in the engine, or is #UD where the engine does not
        implement it (``undefined``).
        Returns True when emulated (skip it), False to run it natively, None when RIP moved."""
        context = self.context
        hit = context.intercepts(kind, info) if context is not None else False
        if not (hit and kind in context.exits_before_faults):
            fault = self._instruction_fault(kind, info)
            if fault is not None:
                self.guest_exception(fault[0], fault[1], rip)
                return None
        if hit:
            # ``hit`` may name the exit more precisely (SVM: selective CR0 write, MWAIT armed)
            name = hit if isinstance(hit, str) else kind
            try:
                operand = self.instruction_operand(kind, info)
            except idt.DeliveryFault as fault:  # a memory operand the exit reports faulted
                self.guest_exception(fault.vector, fault.error_code, rip)
                return None
            except GuestMemoryError:  # nothing backs the operand: the engine reports it
                return False
            key = (name, rip, info) if kind in _STATIC_RECORDS else None
            record = self._insn_records.get(key) if key is not None else None
            if record is None:
                exit = self.vendor.instruction_exit(name, rip, length, operand)
                if key is not None:  # the record depends only on the instruction: kept, as for I/O
                    self._insn_records[key] = exit.reason, exit.raw
            else:
                exit = Exit(ExitKind.INSTRUCTION, record[0], record[1])
            exit.info = (kind, operand)  # for the VMM's own bookkeeping (shadow paging)
            self._exit(exit)
            if exit.value is True:
                if kind in ("monitor", "mwait"):
                    self.monitor_armed = kind == "monitor"  # MWAIT waits on (and disarms) it
                return True
        if context is not None:  # not intercepted, or the VMM let it complete as it would have
            done = context.passthrough(kind, info, rip, length)
            if done is not False:
                return done
        if kind in ("rdtsc", "rdtscp") and self.clock.deterministic:
            self._virtual_rdtsc(kind)
            return True
        if undefined:
            if kind == "icebp":  # INT1: a #DB trap after the instruction (SDM Vol. 3A 6.15),
                self.guest_exception(1, None, rip + length, length=length)  # a privileged software exception
            else:
                self.guest_exception(6, None, rip)  # the engine has no such instruction: #UD
            return None
        self._runs_natively(kind, info)
        return False

    # -- task switches (SDM Vol. 3A 7.3; VMX exit 9, SDM 26.4.2; SVM intercept, APM 15.14.1) ---
    def _task_switch(self, kind: str, rip: int, length: int, info) -> bool | None:
        """A far JMP / CALL whose selector names an available TSS or a task gate, or an IRET
        with EFLAGS.NT = 1, in protected mode outside IA-32e mode: the new TSS is checked as the
        processor does before the exit (present, privilege, limit; any failure is left to the
        engine, which raises the fault), then the task switch is an exit (always under VMX,
        with the intercept under SVM). Unless the VMM emulated it, the engine performs it."""
        if self._task_step == rip:
            return False  # the run loop executes it alone, after its exit
        if not self.cr0() & 1 or self.long_mode() or self.rflags() & idt.RFLAGS_VM:
            return False  # real mode, IA-32e mode (#GP) or virtual-8086 mode: no task switch
        if kind == "iret_task":
            if not self.rflags() & idt.RFLAGS_NT:
                return False  # an ordinary IRET
            _sel, tr_base, _limit, _flags = self.regs.mmr(X.UC_X86_REG_TR)
            try:
                selector = struct.unpack("<H", self.read_linear(tr_base, 2))[0]  # previous task link
            except (GuestMemoryError, idt.DeliveryFault):
                return False
            source = "iret"
        else:
            selector = self._far_selector(info)
            if selector is None:
                return False
            selector = self._task_target(selector)
            if selector is None:
                return False  # a code segment (an ordinary far transfer), or a fault the engine raises
            source = "jmp" if kind == "far_jmp" else "call"
        rf = bool(self.rflags() & idt.RFLAGS_RF)
        handled = self._on_instruction("task_switch", rip, length, (source, selector, rf))
        if handled is False:
            # The engine performs the switch (QEMU's switch_tss), which may load CR3: the engine
            # leaves before the instruction, the run loop executes it alone, then flushes the
            # TLB model so the next translation walks with the new task's paging context.
            self._task_step = rip
            self.uc.emu_stop()
            self.regs.write(X.UC_X86_REG_RIP, rip)
        return handled

    def _far_selector(self, info) -> int | None:
        """The selector of a far JMP / CALL: the immediate of ptr16:16/32, or the word after the
        offset in an m16:16/32 operand."""
        if info and isinstance(info[0], int):
            return info[0]
        op = info[0] if info else None
        if not isinstance(op, Operand):
            return None
        width = 2 if op.data16 else 4
        linear = (self.segment_base_of(op.segment) + effective_address(op, self.read_gpr)) & 0xFFFF_FFFF
        try:
            return struct.unpack("<H", self.read_linear(linear + width, 2))[0]
        except (GuestMemoryError, idt.DeliveryFault):
            return None  # the engine takes the fault

    def _task_target(self, selector: int) -> int | None:
        """The TSS selector a far JMP / CALL to ``selector`` switches to, after the checks the
        processor makes before a task-switch exit (SDM 7.3: present, DPL >= CPL and RPL, an
        available TSS with a limit of at least 67H (32-bit) / 2BH (16-bit)); None otherwise."""
        descriptor = self._raw_descriptor(selector)
        if descriptor is None:
            return None
        access = (descriptor >> 40) & 0xFF
        if access & 0x10 or not access & 0x80:
            return None  # a code or data segment; or not present (#NP from the engine)
        dpl = (access >> 5) & 3
        if dpl < max(self.cpl(), selector & 3):
            return None  # #GP from the engine
        if access & 0xF == 5:  # a task gate: the TSS selector in bits 31:16
            selector = (descriptor >> 16) & 0xFFFF
            descriptor = self._raw_descriptor(selector)
            if descriptor is None:
                return None
            access = (descriptor >> 40) & 0xFF
            if access & 0x10 or not access & 0x80:
                return None
        tss_type = access & 0xF
        if tss_type not in (1, 9):
            return None  # busy TSS or another system type: #GP from the engine
        limit = (descriptor & 0xFFFF) | ((descriptor >> 48) & 0xF) << 16
        if descriptor >> 55 & 1:
            limit = limit << 12 | 0xFFF
        return selector if limit >= (0x67 if tss_type == 9 else 0x2B) else None

    def _raw_descriptor(self, selector: int) -> int | None:
        """The 8-byte GDT descriptor ``selector`` names, or None (null, LDT, beyond the limit)."""
        if selector & ~3 == 0 or selector & 4:
            return None
        _s, base, limit, _f = self.regs.mmr(X.UC_X86_REG_GDTR)
        index = selector & ~7
        if index + 7 > limit:
            return None
        try:
            return struct.unpack("<Q", self.read_linear(base + index, 8))[0]
        except (GuestMemoryError, idt.DeliveryFault):
            return None

    def _instruction_fault(self, kind: str, info) -> tuple[int, int | None] | None:
        """(vector, error code) of a fault the instruction takes before any intercept is
        checked: #UD for a disabled feature, #GP(0) for a privileged instruction at CPL > 0."""
        if kind in _PRIVILEGED:
            return (13, 0) if self.cpl() else None
        if kind not in _FAULT_CHECKED:
            return None
        cr4 = self.regs.read(X.UC_X86_REG_CR4)
        cpl = self.cpl()
        if kind in ("xsetbv", "xsaves", "xrstors"):
            if not cr4 & CR4_OSXSAVE:
                return 6, None
            return (13, 0) if cpl else None
        if kind == "getsec":
            return None if cr4 & CR4_SMXE else (6, None)
        if kind in ("mov_to_dr", "mov_from_dr"):
            if info[0] > 7 or info[0] in (4, 5) and cr4 & CR4_DE:
                return 6, None
            return (13, 0) if cpl else None
        if kind == "rdpmc":
            return (13, 0) if cpl and not cr4 & CR4_PCE else None
        if kind in ("monitor", "mwait"):
            return (6, None) if cpl else None
        if kind in ("sgdt", "sidt", "sldt", "str", "smsw"):
            return (13, 0) if cpl and cr4 & CR4_UMIP else None
        return None

    def _on_sensitive(self, kind: str, rip: int, length: int, info) -> bool | None:
        """A trapped sensitive instruction (plugins/x86/traps.py): RDMSR/WRMSR of an MSR hvsim
        models (and SVM's EFER write trap); any other kind as :meth:`_on_instruction` says."""
        if kind == "hlt":  # about to halt: the run loop tells a HLT from a slice's end by it
            self._hlt_at = rip
            return False
        if kind in ("far_jmp", "far_call", "iret_task"):
            return self._task_switch(kind, rip, length, info)
        if kind not in ("rdmsr", "wrmsr"):
            return self._on_instruction(kind, rip, length, info)
        r = self.regs
        msr = r.read(X.UC_X86_REG_RCX) & 0xFFFF_FFFF
        if msr == MSR_EFER and kind == "wrmsr" and self.context is not None:
            done = self.context.passthrough("wrmsr_efer", None, rip, length)  # SVM's EFER write trap
            if done is not False:
                self.mmu.context_changed()
                return done
        if 0x800 <= msr <= 0x8FF and self.context is not None:  # VMX "virtualize x2APIC mode"
            done = self.context.passthrough(kind + "_x2apic", msr, rip, length)
            if done is not False:
                return done
        if msr not in self.msrs:
            if msr == MSR_EFER and kind == "wrmsr":
                self.mmu.context_changed()
            return False  # Unicorn's own MSR model handles it
        is_write = kind == "wrmsr"
        value = ((r.read(X.UC_X86_REG_RDX) & 0xFFFF_FFFF) << 32 | (r.read(X.UC_X86_REG_RAX) & 0xFFFF_FFFF)
                 if is_write else None)
        exit = self.vendor.msr_exit(msr, is_write, value, rip, length)
        check = self.context.msr_check if self.context is not None else None
        if check is not None and not check(msr, is_write):
            handle_msr(self, exit)  # not intercepted: the model answers without an exit
        else:
            self._exit(exit)
        if exit.vector:  # the handler refused the access: #GP(0) at the instruction
            self.guest_exception(exit.vector, 0, rip)
            return None
        return True

    def msr_intercept(self, msr: int, is_write: bool, rip: int, length: int) -> bool | None:
        """An MSR exit for an MSR hvsim does not model (the VMM's bitmap / MSRPM asks for it):
        the handler emulates it; without one (or if it refuses: ``exit.vector``) it is #GP(0)."""
        r = self.regs
        value = ((r.read(X.UC_X86_REG_RDX) & 0xFFFF_FFFF) << 32 | (r.read(X.UC_X86_REG_RAX) & 0xFFFF_FFFF)
                 if is_write else None)
        exit = self.vendor.msr_exit(msr, is_write, value, rip, length)
        self._exit(exit)
        if exit.vector:
            self.guest_exception(exit.vector, 0, rip)
            return None
        return True

    def _runs_natively(self, kind: str, info) -> None:
        """The instruction is about to run in the engine: the TLB model sees what it flushes."""
        if kind == "mov_to_cr":
            cr, _gpr, value = self.instruction_operand(kind, info)
            self.mmu.on_mov_to_cr(cr, value)
        elif kind == "invlpg":
            self.mmu.on_invlpg(self.instruction_operand(kind, info)[0])

    def _virtual_rdtsc(self, kind: str) -> None:
        """RDTSC / RDTSCP in deterministic mode: EDX:EAX from the VM's virtual clock (SDM Vol. 2B
        RDTSC); RDTSCP also loads ECX with IA32_TSC_AUX."""
        tsc = guest_tsc(self.clock)
        w = self.regs.write
        w(X.UC_X86_REG_RAX, tsc & 0xFFFF_FFFF)
        w(X.UC_X86_REG_RDX, (tsc >> 32) & 0xFFFF_FFFF)
        if kind == "rdtscp":
            w(X.UC_X86_REG_RCX, self.uc.reg_read(X.UC_X86_REG_MSR, MSR_IA32_TSC_AUX) & 0xFFFF_FFFF)

    def instruction_operand(self, kind: str, info) -> tuple:
        """What the exit information reports about a trapped instruction's operand: INVLPG's
        linear address; MOV CR's (CR number, GPR number, value written or 0)."""
        if kind == "invlpg" and info is not None:
            base, index, scale, disp = info
            bits = self.code_bits()
            address = disp
            for reg, factor in ((base, 1), (index, scale)):
                rid = reg_id(bits, reg)
                if rid is not None:
                    address += self.regs.read(rid) * factor
            return (address & ((1 << bits) - 1),)
        if kind in ("mov_to_cr", "mov_from_cr"):
            cr, gpr = info
            value = self.regs.read(_GPRS[gpr]) if kind == "mov_to_cr" else 0
            return cr, gpr, value
        if kind in ("mov_to_dr", "mov_from_dr"):
            return info
        if kind == "mwait":
            return (self.monitor_armed,)
        if isinstance(info, tuple) and info and isinstance(info[0], Operand):
            return self.operand_record(kind, info)
        return info if isinstance(info, tuple) else ()

    def want_traps(self, kinds: frozenset[str]) -> None:
        """Trap these frequent instructions too (plugins/x86/traps.py OPTIONAL), for intercepts."""
        self._traps.want_optional(kinds)

    def invpcid(self, ops: tuple, rip: int) -> bool | None:
        """INVPCID run for the guest (the engine has none; SDM Vol. 2A INVPCID): the type in the
        register operand, the descriptor (PCID, linear address) in memory; the TLB model drops
        what the type names. True when done, None when it faulted (#GP, #PF delivered)."""
        kind = self.read_gpr(ops[0].register)
        try:
            _ops, linear, _ = self.operand_record("invpcid", ops)
            desc = self.read_linear(linear, 16)
        except idt.DeliveryFault as fault:
            self.guest_exception(fault.vector, fault.error_code, rip)
            return None
        pcid, address = int.from_bytes(desc[:8], "little"), int.from_bytes(desc[8:], "little")
        if kind > 3 or pcid >> 12 or kind == 0 and not _canonical(address, bool(self.regs.read(X.UC_X86_REG_CR4) & 1 << 12)):
            self.guest_exception(idt.GP, 0, rip)
            return None
        mmu = self.mmu
        if kind == 0:
            mmu.tlb.invalidate(mmu.tag, pcid, address=address)
        elif kind == 1:
            mmu.tlb.invalidate(mmu.tag, pcid, keep_global=True)
        else:  # 2: every context, globals too; 3: every context but globals
            mmu.tlb.invalidate(mmu.tag, keep_global=kind == 3)
        return True

    def read_gpr(self, number: int) -> int:
        return self.regs.read(_GPRS[number])

    def operand_record(self, kind: str, ops: tuple) -> tuple:
        """(operands, linear address of the memory operand or None, LMSW's source data or 0)
        for exit information; reading LMSW's memory source may raise a #PF DeliveryFault."""
        linear, value = None, 0
        for op in ops:
            if op.memory:
                linear = (self.segment_base_of(op.segment) + effective_address(op, self.read_gpr)) & MASK64
                if kind == "lmsw":
                    value = int.from_bytes(self.read_linear(linear, 2), "little")
            elif kind == "lmsw":
                value = self.read_gpr(op.register) & 0xFFFF
            elif kind == "invpcid":
                value = self.read_gpr(op.register)  # the INVPCID type
        return ops, linear, value

    def lmsw_source(self, ops: tuple) -> int | None:
        """LMSW's 16-bit source operand, or None if reading it faults."""
        try:
            return self.operand_record("lmsw", ops)[2]
        except (idt.DeliveryFault, GuestMemoryError):
            return None

    def segment_base_of(self, segment: int) -> int:
        """The base of segment register ``segment`` (0 ES .. 5 GS) for a data access; in long
        mode FS/GS come from their base MSRs and the others are 0."""
        if self.long_mode():
            reg = {4: X.UC_X86_REG_FS_BASE, 5: X.UC_X86_REG_GS_BASE}.get(segment)
            return self.regs.read(reg) if reg is not None else 0
        return self.segment_base(("es", "cs", "ss", "ds", "fs", "gs")[segment])

    def code_bits(self) -> int:
        """Default operand size of the code being translated (compatibility mode not modelled)."""
        return 64 if self.long_mode() else (32 if self.cr0() & 1 else 16)

    def _on_unmapped(self, uc, access, address, size, value, _ud):
        if self.vm.mmio_fallback and access != _MEM_FETCH_UNMAPPED:
            # Nothing backs this page: with an hvsim_mmio plugin present it becomes MMIO (as
            # KVM reports any access outside the memslots to the VMM) and the access is retried.
            self.map_lazy(address & ~0xFFF)
            return True
        self._unmapped = (access, address, size, value)
        return False

    # -- exceptions ------------------------------------------------------------------------
    def guest_exception(self, vector: int, error_code: int | None, rip: int, cr2: int | None = None,
                        length: int = 0) -> None:
        """An exception the guest's own instruction raised: an exit if the VMM intercepts it
        (VMX exception bitmap, SVM exception intercepts), else delivered through the IDT.
        ``cr2``: a #PF's linear address, written to CR2 only if the guest takes the #PF (an
        intercepted #PF reports it in the exit instead: SDM 27.1, APM 15.12).
        ``length``: the exception is a software exception raised by an instruction of that
        length (INT3, INTO: type 6; INT1 / ICEBP: type 5, privileged), ``rip`` the address after
        it. Intercepted, the exit names the instruction itself: RIP at it and its length (VMX
        VM-exit instruction length, SDM 28.2.5; SVM nRIP past it for INT3/INTO, APM 15.7.1), so
        a VMM re-injects it as KVM does; otherwise the handler gets the address after it."""
        context = self.context
        check = context.exception_check if context is not None else None
        if vector == idt.PF and cr2 is None:
            cr2 = self.regs.read(X.UC_X86_REG_CR2)
        if check is not None and check(vector, error_code):
            # A full VM exit and re-entry around it: the VMM sees the whole guest state and may
            # change it (skip the instruction, inject something else) before the guest resumes.
            cr2 = cr2 if vector == idt.PF else 0
            if length:
                rip -= length
                self.regs.write(X.UC_X86_REG_RIP, rip)
            context.vmexit()
            exit = self.vendor.exception_exit(vector, error_code, rip, cr2, length=length)
            if self.iret_unblocked_nmi and vector != idt.DF:
                self.vendor.nmi_unblocked_by_iret(exit)
            self._exit(exit)
            context.resume_state()
        else:
            if vector == idt.PF:
                self.regs.write(X.UC_X86_REG_CR2, cr2)
            if length:
                kind = 5 if vector == 1 else 6
                self.deliver_event(vector, None, rip, software=kind == 6, event_type=kind, length=length)
            else:
                self.deliver_event(vector, error_code, rip)

    def deliver_event(self, vector: int, error_code: int | None, rip: int, software: bool = False,
                      event_type: int | None = None, length: int = 0) -> None:
        """Deliver ``vector`` through the guest's IDT (plugins/x86/idt.py); ``rip`` is the
        return address pushed; a failure escalates to #DF and to a triple-fault shutdown.
        ``event_type`` is the interruption type (EventType values: 0 external interrupt, 2 NMI,
        3 hardware exception, 4 software interrupt, 6 software exception); an exception during
        delivery that the VMM intercepts exits with this event as the one being delivered (VMX
        IDT-vectoring information, SVM EXITINTINFO). ``length``: a software event's instruction
        length (INT n, INT3, INTO, INT1; an injected one's VM-entry instruction length): such an
        exit names the instruction (RIP at it, ``rip - length``) and its length (SDM 28.2.5)."""
        if event_type is None:
            event_type = 4 if software and vector >= 32 else (6 if software else (3 if vector < 32 else 0))
        context = self.context
        check = context.exception_check if context is not None else None
        try:
            idt.deliver(self, vector, error_code, rip, software, intercepted=check)
            self._latch.clear()
            self._delivered += 1
            if event_type == 2:
                self.nmi_blocked = True  # until the next IRET (SDM 6.7.1)
        except idt.DeliveryIntercepted as hit:
            cr2 = self.regs.read(X.UC_X86_REG_CR2) if hit.vector == idt.PF else 0
            self._latch.clear()
            if self._vectoring_depth >= _MAX_VECTORING_DEPTH:
                # The VMM answers each such exit by delivering an event that faults the same way
                # (a livelock on hardware): end the run with one line instead of recursing.
                self.vm.crash(f"event delivery keeps raising intercepted exception {hit.vector} "
                              f"({idt.EXCEPTION_NAMES.get(hit.vector, hit.vector)}) and the VMM re-delivers it")
                return
            self._vectoring_depth += 1
            if length and event_type in (4, 5, 6) and hit.original is None:
                self.regs.write(X.UC_X86_REG_RIP, rip - length)  # the INT instruction, not past it
            else:
                length = 0
            try:
                context.vmexit()
                self._exit(self.vendor.exception_exit(hit.vector, hit.error_code, rip, cr2,
                                                      vectoring=(hit.original or (vector, error_code, event_type)),
                                                      length=length))
                if self.vm.status is None:
                    context.resume_state()
            finally:
                self._vectoring_depth -= 1
        except idt.TripleFault as tf:
            self._latch.clear()
            self.shutdown(f"triple fault: {tf}")

    def shutdown(self, detail: str) -> None:
        """Triple fault: a VM exit (VMX reason 2; SVM SHUTDOWN when intercepted) that the VMM
        handles like any other; the default handler ends the run. Without the SVM intercept the
        processor shuts down (the run ends as a guest crash)."""
        context = self.context
        if context is None or not context.intercepts("shutdown", None):
            self.vm.crash(detail)
            return
        context.vmexit()
        self._exit(self.vendor.triple_fault_exit(detail))
        if self.vm.status is None:
            context.resume_state()

    def _page_fault_error_code(self, rip: int) -> int:
        """Unicorn sets CR2 but not the error code: walk again with the access the faulting
        instruction made (a fetch if CR2 is where it executes, a write if it writes a memory
        operand, else a read) to find it (SDM 4.7)."""
        cr2 = self.regs.read(X.UC_X86_REG_CR2)
        ctx = (self.cr0(), self.regs.read(X.UC_X86_REG_CR3), self.regs.read(X.UC_X86_REG_CR4),
               self.efer(), self.cpl())
        if rip <= cr2 < rip + 16:
            access = Access.EXECUTE
        else:
            try:
                code = self.read_linear(self.segment_base("cs") + rip, 15)
            except (GuestMemoryError, idt.DeliveryFault):
                code = b""
            access = Access.WRITE if writes_memory(code, self.code_bits()) else Access.READ
        w = self.mmu.walk(cr2, access, ctx[-1], set_ad=False)
        return w.error_code if w.fault else paging.PFEC_P

    def deliver_pending(self) -> bool:
        """Whether a queued event can be taken now (it ends a halt); the run loop takes it at
        the next instruction boundary, in the manuals' priority order (events.boundary)."""
        context = self.context
        ctl = context.event_controls if context is not None else _NO_CONTROLS
        for event in self.events:
            if event.type is not EventType.EXTERNAL_INTERRUPT:
                return True
            if self.rflags() & idt.RFLAGS_IF or (ctl.intr_exits and ctl.intr_exit_ignores_if):
                return True
        return False

    # -- architectural state, used by idt.py and the handlers --------------------------------
    def rip(self) -> int:
        return self.regs.read(X.UC_X86_REG_RIP)

    def set_rip(self, value: int) -> None:
        self.regs.write(X.UC_X86_REG_RIP, value)

    def rsp(self) -> int:
        return self.regs.read(X.UC_X86_REG_RSP)

    def set_rsp(self, value: int) -> None:
        self.regs.write(X.UC_X86_REG_RSP, value)

    def rflags(self) -> int:
        return self.regs.read(X.UC_X86_REG_RFLAGS)

    def set_rflags(self, value: int) -> None:
        self.regs.write(X.UC_X86_REG_RFLAGS, value | 2)

    def cr0(self) -> int:
        return self.regs.read(X.UC_X86_REG_CR0)

    def efer(self) -> int:
        return self.regs.msr(MSR_EFER)

    def long_mode(self) -> bool:
        return bool(self.efer() & paging.EFER_LMA)

    def cs(self) -> int:
        return self.regs.read(X.UC_X86_REG_CS) & 0xFFFF

    def ss(self) -> int:
        return self.regs.read(X.UC_X86_REG_SS) & 0xFFFF

    implicit_supervisor = False  # set while event delivery reads the IDT, GDT, TSS (idt._supervisor)

    def cpl(self) -> int:
        if self.implicit_supervisor:
            return 0
        return self.cs() & 3 if self.cr0() & 1 else 0

    def idtr(self) -> tuple[int, int, int, int]:
        return self.regs.mmr(X.UC_X86_REG_IDTR)

    def segment_base(self, name: str) -> int:
        if not self.cr0() & 1:
            return self.regs.read(getattr(X, f"UC_X86_REG_{name.upper()}")) << 4
        if self.long_mode() and name in ("cs", "ss", "ds", "es"):
            return 0
        return self._descriptor(self.regs.read(getattr(X, f"UC_X86_REG_{name.upper()}")))[0]

    def _descriptor(self, selector: int) -> tuple[int, int, int]:
        """(base, limit, access byte | flags << 8) of a GDT/LDT selector."""
        if selector & 4:
            raise idt.DeliveryFault(idt.GP, selector & ~3, "LDT selectors are not modelled")
        _s, base, limit, _f = self.regs.mmr(X.UC_X86_REG_GDTR)
        index = selector & ~7
        if index + 7 > limit:
            raise idt.DeliveryFault(idt.GP, selector & ~3, f"selector {selector:#x} is beyond the GDT limit")
        d = struct.unpack("<Q", self.read_linear(base + index, 8))[0]
        seg_base = ((d >> 16) & 0xFF_FFFF) | (((d >> 56) & 0xFF) << 24)
        seg_limit = (d & 0xFFFF) | (((d >> 48) & 0xF) << 16)
        return seg_base, seg_limit, (d >> 40) & 0xFFFF

    def hidden_segment(self, selector: int) -> tuple[int, int, int, int] | None:
        """The hidden part a segment register holds: (base, limit in bytes, access byte, flags
        nibble G|D/B|L|AVL), from the descriptor its selector names; None for a null or
        unreadable selector. Real mode: base = selector << 4, limit 64 KiB, data read/write.

        Kept per selector until GDTR or CR3 changes, as the processor keeps a descriptor in the
        segment register until the segment is loaded again (the engine does not report loads)."""
        return self.hidden_segment_in(selector, self.segment_context())

    def task_register(self) -> tuple[int, int, int, int, int] | None:
        """TR as the processor holds it: (selector, base, limit, access byte, G|D/B|L|AVL), or
        None if the guest never loaded it. The engine reports TR's flags as the descriptor's
        high dword (access byte in 15:8, the flags nibble in 23:20), with the type the
        descriptor had before LTR / the task switch marked it busy; TR always names a busy TSS."""
        selector, base, limit, flags = self.regs.mmr(X.UC_X86_REG_TR)
        if not selector & ~3:
            return None
        access = (flags >> 8) & 0xFF
        if access & 0x1F in (0x01, 0x09):  # an available 16-/32-bit TSS: busy once loaded
            access |= 0x02
        return selector, base, limit, access, (flags >> 20) & 0xF

    def segment_context(self) -> tuple | None:
        """What hidden segment parts depend on: None in real mode, else (GDTR base and limit,
        CR3). Read once when several segments are looked up together (the exit's state save)."""
        if not self.cr0() & 1:
            return None
        return self.regs.mmr(X.UC_X86_REG_GDTR)[1:3], self.regs.read(X.UC_X86_REG_CR3)

    def hidden_segment_in(self, selector: int, context: tuple | None) -> tuple[int, int, int, int] | None:
        """:meth:`hidden_segment` under a :meth:`segment_context` read before."""
        if context is None:
            return selector << 4, 0xFFFF, 0x93, 0
        key = (selector, context)
        cache = self._segments
        if key not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[key] = self._hidden_segment(selector)
        return cache[key]

    def _hidden_segment(self, selector: int) -> tuple[int, int, int, int] | None:
        if selector & ~3 == 0:
            return None
        try:
            base, limit, access = self._descriptor(selector)
        except (idt.DeliveryFault, GuestMemoryError):
            return None
        flags = (access >> 12) & 0xF
        if flags & 0x8:  # G: the limit counts 4 KiB pages
            limit = (limit << 12) | 0xFFF
        access &= 0xFF
        if access & 0x10:  # loading a code or data segment sets its accessed bit (SDM 3.4.5.1)
            access |= 1
        return base, limit, access, flags

    def code_segment_dpl(self, selector: int) -> int:
        if selector & ~3 == 0:
            raise idt.DeliveryFault(idt.GP, 0, "the gate's code segment selector is null")
        _b, _l, access = self._descriptor(selector)
        if not access & 0x80:
            raise idt.DeliveryFault(idt.NP, selector & ~3, f"code segment {selector:#x} is not present")
        return (access >> 5) & 3

    def load_cs(self, selector: int) -> None:
        if selector != self.cs():
            self.regs.write(X.UC_X86_REG_CS, selector)

    def load_cs_real(self, segment: int) -> None:
        self.regs.write(X.UC_X86_REG_CS, segment)

    def enter_privilege(self, cpl: int) -> None:
        """An event delivery goes to an inner privilege level: the engine's CPL first (so it
        accepts the inner CS and SS), then the segment loads (plugins/x86/idt.py)."""
        self._shadow.set_cpl(cpl)

    def load_ss(self, selector: int) -> None:
        self.regs.write(X.UC_X86_REG_SS, selector)

    def _tss_base(self) -> int:
        _sel, base, limit, _f = self.regs.mmr(X.UC_X86_REG_TR)
        if limit == 0:
            raise idt.DeliveryFault(10, 0, "no TSS is loaded for the stack switch (#TS)")
        return base

    def tss_stack32(self, dpl: int) -> tuple[int, int]:
        base = self._tss_base()
        esp, ss = struct.unpack("<II", self.read_linear(base + 4 + 8 * dpl, 8))
        return ss & 0xFFFF, esp

    def tss_stack64(self, dpl: int = 0, ist: int = 0) -> int:
        base = self._tss_base()
        offset = 0x24 + 8 * (ist - 1) if ist else 4 + 8 * dpl
        return struct.unpack("<Q", self.read_linear(base + offset, 8))[0]

    # -- memory at linear addresses (through the guest's own paging) ------------------------
    def trace_translation(self, address: int):
        return self.mmu.trace(address)

    def translate(self, linear: int, access: Access):
        """The guest's stage-1 walk of ``linear`` (tables read through stage 2), A/D untouched."""
        return self.mmu.walk(linear, access, set_ad=False)

    def _access_linear(self, linear: int, size: int, access: Access) -> list[tuple[int, int]]:
        """Split an access at page boundaries; returns (hpa, length) pieces or raises #PF."""
        pieces, offset = [], 0
        while offset < size:
            addr = linear + offset
            n = min(size - offset, 0x1000 - (addr & 0xFFF))
            try:
                hpa = self.mmu.linear_to_hpa(addr, access)
            except PageFault as pf:
                self.regs.write(X.UC_X86_REG_CR2, addr)
                raise idt.DeliveryFault(idt.PF, pf.error_code, f"{pf.detail} at {addr:#x}") from None
            pieces.append((hpa, n))
            offset += n
        return pieces

    def read_linear(self, linear: int, size: int) -> bytes:
        # Through the engine's own TLB first (a C-level hit, or one fill); a fault is then taken
        # the slow way, which raises the #PF delivery needs.
        # (Under shadow paging that is the VMM's shadow entry, which mirrors the guest's; a page
        # not shadowed yet is read the slow way, through the guest's own tables.)
        if (size <= len(self._rbuf)
                and not _vmem_read(self._raw._uch, linear, UC_PROT_READ, self._rbuf, size)):
            self.mmu.pending = None
            return self._rbuf.raw[:size]
        self.mmu.pending = None
        host = self.vm.host
        return b"".join(host.read(hpa, n) for hpa, n in self._access_linear(linear, size, Access.READ))

    def write_linear(self, linear: int, data: bytes) -> None:
        pos, host = 0, self.vm.host
        for hpa, n in self._access_linear(linear, len(data), Access.WRITE):
            host.write(hpa, data[pos:pos + n])
            pos += n

    def write_stack(self, rsp: int, data: bytes) -> None:
        try:
            self.write_linear(self.segment_base("ss") + rsp if not self.long_mode() else rsp, data)
        except GuestMemoryError:
            raise idt.DeliveryFault(12, 0, f"stack at {rsp:#x} is outside guest memory") from None
