"""One arm64 vCPU: a Unicorn engine running the guest at EL1, with hvsim playing EL2.

The engine is set up the way a hypervisor leaves a CPU before ERET to a guest: SCR_EL3.{NS,
HCE,RW} and HCR_EL2.RW so EL1 is AArch64 and HVC traps (Arm ARM D23.2 SCR_EL3, HCR_EL2),
VMPIDR_EL2 so the guest's MPIDR_EL1 reads name this vCPU. Host memory is mapped once, high in
the engine's physical space; the engine runs in virtual-TLB mode and :mod:`.mmu` fills it with
the guest's stage 1 and hvsim's stage 2 (VTTBR_EL2 / VTCR_EL2). MMIO goes through :mod:`.mmio`.

What traps to "EL2" and how (see docs/unicorn-notes.md):

- HVC arrives as ``UC_HOOK_INTR`` 11 with PC past it: a HYPERCALL exit (ESR_EL2.EC 0x16, ISS =
  imm16) dispatched and completed inside the hook, without leaving the engine.
- WFI makes ``emu_start`` return: with HCR_EL2.TWI a HALT exit (ESR_EL2.EC 0x01, TI = WFI) for
  the run loop; without it the vCPU waits in the guest (HALTED, no exit) for an interrupt.
- SMC at EL1 with HCR_EL2.TSC: a HYPERCALL exit (EC 0x17, ISS = imm16) handled like HVC, as KVM
  treats an SMC as an SMCCC call; without TSC it is UNDEFINED (QEMU virt has no EL3).
- MRS/MSR/SYS the EL2 controls trap (HCR_EL2, MDCR_EL2, CNTHCTL_EL2): SYSREG exits (EC 0x18);
  WFE under TWE (EC 0x01, TI 0b01) and FP/SIMD under CPTR_EL2.TFP (EC 0x07): completed inside
  the engine (:mod:`.traps`). Every trap writes ESR/FAR/HPFAR/ELR/SPSR_EL2 (``vcpu.el2``).
- The guest's generic timers are modelled (:mod:`.timer`): a slice never runs past the next
  deadline, and a vCPU in WFI (or PSCI CPU_SUSPEND) with a timer armed stays RUNNABLE for the
  run loop with ``wfi_wait`` set, sleeping in :meth:`Arm64Vcpu.run` until the timer's PPI.
- Loads and stores to IPAs where a device sits: MMIO exits (EC 0x24), completed inside the
  engine. Any other stage-2 fault (an IPA nothing backs, a descriptor the hypervisor changed):
  a STAGE2_FAULT exit (EC 0x24 / 0x20), after which the instruction is retried.
- SVC, BRK, undefined instructions and the guest's own stage-1 faults are the guest's business:
  they go to its VBAR_EL1 vectors (:mod:`.exceptions`), as on hardware with nothing trapped.
- An instruction fetch from an IPA without RAM is reported to the guest as a synchronous
  external abort, as KVM does; if its vector table is not there either, the run ends.
"""

from __future__ import annotations

import ctypes

from unicorn import (
    UC_ARCH_ARM64,
    UC_ERR_EXCEPTION,
    UC_ERR_FETCH_UNMAPPED,
    UC_HOOK_INTR,
    UC_HOOK_MEM_UNMAPPED,
    UC_MODE_ARM,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    Uc,
    UcError,
)
from unicorn.arm64_const import (
    UC_ARM64_REG_PC,
    UC_ARM64_REG_PSTATE,
    UC_ARM64_REG_SP,
    UC_ARM64_REG_VBAR_EL1,
    UC_ARM64_REG_X0,
    UC_ARM64_REG_X29,
    UC_ARM64_REG_X30,
)
from unicorn.unicorn_py3.unicorn import uclib

from hvsim.core.arch import Vcpu, VcpuState
from hvsim.core.clock import EngineSlice
from hvsim.core.engine import HOOK_INTR, HOOK_MEM_EVENT, FastRegs, RawHooks, TbRequest
from hvsim.core.exits import Event, EventType, Exit, ExitKind
from hvsim.core.memory import Access, Walk
from hvsim.core.mmu import HOST_PHYS_BASE, Stage2Fault

from . import el2, exceptions, layout, stage1, sysregs
from .exits import (ESR_ELx_EC_HVC64, ESR_ELx_EC_ILL, ESR_ELx_EC_SERROR, ESR_ELx_EC_SMC64, WFI_RECORD,
                    El2Record, esr)
from .mmio import MmioTrap
from .mmu import UNTIL, Arm64Mmu, Stage1Abort, deliver_stage1, run_end_abort, stage2_exit
from .tlbi import MaintenanceSites
from .timer import Timers
from .traps import SysregTraps

# Xn by register number; 31 is SP in an address (XZR as data is handled by xreg_zr).
_XREGS = [UC_ARM64_REG_X0 + n for n in range(29)] + [UC_ARM64_REG_X29, UC_ARM64_REG_X30, UC_ARM64_REG_SP]

_lib = ctypes.CDLL(uclib._name)
_vmem_read = _lib.uc_vmem_read
_vmem_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_vmem_translate = _lib.uc_vmem_translate
_vmem_translate.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p]
_reg_read_batch = _lib.uc_reg_read_batch
_reg_write = _lib.uc_reg_write

# Virtual exceptions: (vector offset, the PSTATE bit that masks it), Arm ARM D1.3.6.
_EVENTS = {
    EventType.VIRTUAL_IRQ: (exceptions.IRQ, exceptions.PSTATE_I),
    EventType.VIRTUAL_FIQ: (exceptions.FIQ, exceptions.PSTATE_F),
    EventType.VIRTUAL_SERROR: (exceptions.SERROR, exceptions.PSTATE_A),
}


# HCR_EL2's virtual-exception inputs and the events they make pending.
_HCR_LINES = ((el2.HCR_VI, EventType.VIRTUAL_IRQ), (el2.HCR_VF, EventType.VIRTUAL_FIQ),
              (el2.HCR_VSE, EventType.VIRTUAL_SERROR))


def _withdraw(events, event) -> None:
    """Remove ``event`` itself (not an equal one) from a vCPU's queue, if still there."""
    for i, e in enumerate(events):
        if e is event:
            del events[i]
            return


def _x0_writer(uch: ctypes.c_void_p):
    """``smccc_return(value)``: write an SMCCC result to X0 with one reused buffer."""
    buf = ctypes.c_uint64()
    ref = ctypes.byref(buf)

    def smccc_return(value: int, _buf=buf, _ref=ref, _uch=uch, _write=_reg_write,
                     _x0=UC_ARM64_REG_X0) -> None:
        _buf.value = value  # ctypes wraps negative values to 64 bits (-1 -> all ones)
        _write(_uch, _x0, _ref)

    return smccc_return


class Arm64Vcpu(Vcpu):
    """An arm64 vCPU. ``regs`` (general registers, :class:`FastRegs`), ``sysregs`` (system
    registers by encoding), ``el2`` (HCR_EL2 and CPTR_EL2 as the hypervisor programs them,
    :class:`.el2.El2Regs`), ``mpidr``, ``smccc_x0`` (X0 when the last HVC trapped, read with
    PC in one engine call) and ``smccc_return(value)`` (write X0) are for exit handlers.
    Records are cached per PC (HVC immediates, MMIO syndromes): code rewritten in place at a
    trapping instruction is noticed only when its access stops matching the cached decoding."""

    def __init__(self, vm, index: int) -> None:
        super().__init__(vm, index)
        uc = self.uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        uc.ctl_set_page_size(0x1000)  # QEMU's arm default is 1 KiB; the granule the TLB fills is 4 KiB
        # Host memory sits high in the engine's physical space; the MMU's fills (guest stage 1,
        # then stage 2) point into it. MMIO ranges stay at their IPAs (:mod:`.mmio`).
        uc.mem_map_ptr(HOST_PHYS_BASE, vm.host.size, UC_PROT_ALL, vm.host.ptr)
        self.regs = FastRegs(uc)
        self.request_cache = TbRequest(uc)  # the prescans' ctl_request_cache, at every engine entry
        self.sysregs = sys = sysregs.SysRegs(uc)
        sys.write(sysregs.SCR_EL3, sysregs.SCR_EL3_NS | sysregs.SCR_EL3_HCE | sysregs.SCR_EL3_RW)
        sys.write(sysregs.HCR_EL2, sysregs.HCR_EL2_RW)
        self.regs.write(UC_ARM64_REG_PSTATE, exceptions.PSTATE_ENTRY)
        self._sctlr_reset = sys.read(sysregs.SCTLR_EL1)
        self._uch = ctypes.c_void_p(uc._uch.value)
        self.clock = vm.clock  # guest time: the host's, or virtual (deterministic mode)
        self.stop_requested = False
        self._dispatch = vm.dispatch
        self.smccc_x0 = 0  # X0 when the last HVC trapped: the SMCCC function id
        self.smccc_return = _x0_writer(self._uch)
        self._hvc: dict[int, tuple] = {}  # HYPERCALL Exit arguments by the PC after the HVC
        self.hooks = RawHooks(uc)
        self.mmio = MmioTrap(self)
        self._in_engine = False
        self._reenter = False  # the engine was stopped so that an HCR_EL2 change takes effect
        self.twi = self.tsc = False
        self.wfi_wait = False  # in WFI with a timer armed: run() waits for it (see _wait)
        self._yield = False  # a trapped WFE gave the slice up
        self._entry_error = ""  # why the next ERET to EL1 cannot happen (HCR_EL2.TGE)
        self.redirected = False  # the handler of the current trap wrote ELR_EL2 / SPSR_EL2
        self._slice_end_ns = 0
        # VPIDR_EL2 / VMPIDR_EL2 reset to the CPU's MIDR_EL1 and this vCPU's MPIDR (D23.2).
        self.el2 = el2.El2Regs(None, vpidr=sys.read(sysregs.MIDR_EL1), vmpidr=layout.mpidr(index))
        self._hcr_events: dict[int, Event] = {}  # the events HCR_EL2.VI/VF/VSE hold pending
        self.sysreg_traps = SysregTraps(self)
        # The vGIC (:mod:`.gic`): this vCPU's redistributor and virtual CPU interface.
        self.vgic = getattr(vm.arch, "vgic", None)
        self.timers = Timers(self)
        self.gic_cpuif = self.vgic.attach(self) if self.vgic is not None else None
        sys.write(sysregs.CPACR_EL1, 0)  # FPEN 0b00 out of reset, as QEMU's system emulation
        self.sysreg_traps.watch_cpacr()
        self.el2.on_change = self._el2_changed
        for name in ("VPIDR_EL2", "VMPIDR_EL2", "HCR_EL2"):
            self._el2_changed(name)
        self.mmu = Arm64Mmu(self, self.hooks, getattr(vm.arch, "stage2_tables", None))
        self._slice = EngineSlice(vm, self._uch)
        self.tlbi_sites = MaintenanceSites(self)
        self.hooks.add(UC_HOOK_INTR, HOOK_INTR, self._intr_hook())
        self.hooks.add(UC_HOOK_MEM_UNMAPPED, HOOK_MEM_EVENT, self.mmio.on_unmapped)

    # -- EL2 ----------------------------------------------------------------------------------
    @property
    def mpidr(self) -> int:
        """MPIDR_EL1 as the guest reads it: VMPIDR_EL2 (what PSCI's target_cpu names)."""
        return self.el2.VMPIDR_EL2

    def _el2_changed(self, name: str = "HCR_EL2") -> None:
        """An EL2 register was written: the trap controls follow at once; engine hooks that
        must be added or removed wait for the next entry, forced now if the guest is in the
        engine. VPIDR/VMPIDR/CNTVOFF_EL2 go to the engine registers EL1 reads through."""
        e = self.el2
        mmu = getattr(self, "mmu", None)  # a stage-2 model, when the VM has one
        if mmu is not None and name in ("HCR_EL2", "VTTBR_EL2", "VTCR_EL2"):
            mmu.context_changed()  # HCR_EL2.VM, VTTBR_EL2 and VTCR_EL2 are the stage-2 context
        if name == "VPIDR_EL2":
            self.sysregs.write(sysregs.VPIDR_EL2, e.VPIDR_EL2)
            return
        if name == "VMPIDR_EL2":
            self.sysregs.write(sysregs.VMPIDR_EL2, e.VMPIDR_EL2)
            return
        if name in ("ELR_EL2", "SPSR_EL2"):
            self._exception_return(name)
            return
        if name == "CNTVOFF_EL2":
            self.sysregs.write(sysregs.CNTVOFF_EL2, e.CNTVOFF_EL2)
            self.timer_changed()
            return
        if name not in ("HCR_EL2", "MDCR_EL2", "CNTHCTL_EL2", "CPTR_EL2"):
            return  # kept for the hypervisor to read back (VTTBR_EL2, HSTR_EL2, ESR_EL2, ...)
        hcr = e.HCR_EL2
        self._virtual_lines(hcr)
        self.twi = bool(hcr & el2.HCR_TWI)
        self.tsc = bool(hcr & el2.HCR_TSC)
        # With TGE set (and E2H clear) EL1 is not in use: an ERET to EL1 is an illegal
        # exception return (Arm ARM D1.11.5, "Illegal return events from AArch64 state").
        self._entry_error = ("HCR_EL2.TGE is 1: an exception return to EL1 is an illegal exception "
                             "return (Arm ARM D1.11.5), taken to EL2 as an Illegal Execution state "
                             "exception (EC 0x0E); hvsim models no EL2 host, so the guest cannot be "
                             "entered") if hcr & el2.HCR_TGE and not hcr & el2.HCR_E2H else ""
        if self.sysreg_traps.update_controls((hcr, e.MDCR_EL2, e.CNTHCTL_EL2, e.CPTR_EL2)) and self._in_engine:
            self._reenter = True
            self.uc.emu_stop()

    def _virtual_lines(self, hcr: int) -> None:
        """HCR_EL2.VI / VF / VSE are the virtual IRQ / FIQ / SError inputs (D1.3.6): while a bit
        is set its exception is pending for the guest, taken when PSTATE unmasks it. VI and VF
        are levels (pending again after each time they are taken, until the hypervisor clears
        them); VSE is cleared by the PE when the virtual SError is taken."""
        for bit, etype in _HCR_LINES:
            event = self._hcr_events.get(bit)
            if hcr & bit and event is None:
                self._hcr_events[bit] = event = Event(etype)
                self.events.append(event)
            elif not hcr & bit and event is not None:
                del self._hcr_events[bit]
                _withdraw(self.events, event)

    def _taken(self, event: Event) -> None:
        """A pending exception was taken: HCR_EL2's lines follow (VSE clears, VI/VF re-arm)."""
        for bit, mine in list(self._hcr_events.items()):
            if mine is event:
                del self._hcr_events[bit]
                if bit == el2.HCR_VSE:
                    self.el2.HCR_EL2 &= ~el2.HCR_VSE
                else:
                    self._virtual_lines(self.el2.HCR_EL2)

    def _exception_return(self, name: str) -> None:
        """The hypervisor wrote ELR_EL2 or SPSR_EL2 while handling a trap: its ERET returns
        there (D1.11 "Exception return": PC = ELR_EL2, PSTATE = SPSR_EL2), so the guest resumes
        at once at the new address / in the new state, instead of where hvsim would complete the
        trapped instruction. SPSR_EL2.M must name EL0t, EL1t or EL1h in AArch64; any other
        value is an illegal exception return hvsim cannot model (there is no EL2 code to run):
        the run ends with one line."""
        e, regs = self.el2, self.regs
        self.redirected = True
        if name == "ELR_EL2":
            regs.write(UC_ARM64_REG_PC, e.ELR_EL2)
            return
        spsr = e.SPSR_EL2
        if spsr & 0x1F not in (0b00000, 0b00100, 0b00101):
            self.vm.crash(f"SPSR_EL2.M = {spsr & 0x1F:#07b}: an exception return to that mode is an illegal "
                          f"exception return (Arm ARM D1.11.5); hvsim's guests run at EL1 or EL0 in AArch64")
            return
        exceptions.exception_return(self, spsr)

    def take_trap(self, record: El2Record, elr: int) -> None:
        """A trap to EL2: ESR_EL2/FAR_EL2/HPFAR_EL2 from ``record``, ELR_EL2 = ``elr``,
        SPSR_EL2 = the guest's PSTATE."""
        e = self.el2
        self.redirected = False
        e.record = record
        e._ELR_EL2 = elr
        e._SPSR_EL2 = self.regs.read_low32(UC_ARM64_REG_PSTATE)

    # -- the generic timer ---------------------------------------------------------------------
    def timer_changed(self) -> None:
        """A timer register (or CNTVOFF_EL2) was written: its line now, and a slice running in
        the engine ends before the new deadline (the engine stops at the end of the block)."""
        if self.timers.poll():
            self.deliver_pending_in_engine()
        deadline = self.timers.next_deadline_ns()
        if self._in_engine and (self.events or (deadline is not None and deadline < self._slice_end_ns)):
            self._reenter = True
            self.uc.emu_stop()

    def deliver_pending_in_engine(self) -> None:
        """An interrupt raised while the guest runs is taken when the slice is cut short."""
        if self._in_engine:
            self._reenter = True
            self.uc.emu_stop()

    def yield_slice(self) -> None:
        self._yield = True
        self.uc.emu_stop()

    def _wait(self, slice_us: int) -> bool:
        """WFI with a timer armed: True when the wait is over (an interrupt is pending), else
        sleep toward the timer's deadline, at most one slice, unless another vCPU can run."""
        timers = self.timers
        timers.poll()
        if not self.events:
            deadline = timers.next_deadline_ns()
            if deadline is None:  # nothing armed any more: an ordinary halt
                self.wfi_wait = False
                self.state = VcpuState.HALTED
                return False
            others = any(v is not self and v.state is VcpuState.RUNNABLE and not getattr(v, "wfi_wait", False)
                         for v in self.vm.vcpus)
            if not others:
                self.clock.wait_until_ns(min(deadline, self.clock.now_ns() + slice_us * 1000))  # SIGINT ends it
                timers.poll()
            if not self.events:
                return False
        self.wfi_wait = False  # WFI completes even if PSTATE masks the interrupt (D1.16.2)
        self.deliver_pending()
        return True

    def halted(self) -> None:
        """The vCPU was halted (WFI): with a timer armed it waits for it instead (``_wait``)."""
        if self.state is VcpuState.HALTED and self.timers.next_deadline_ns() is not None:
            self.state = VcpuState.RUNNABLE
            self.wfi_wait = True

    # -- registers and guest memory as this CPU sees them -------------------------------------
    def xreg(self, n: int) -> int:
        """Xn, with n = 31 meaning SP (the base register of an address)."""
        return self.regs.read(_XREGS[n])

    def write_xreg(self, n: int, value: int) -> None:
        self.regs.write(_XREGS[n], value)

    def xreg_zr(self, n: int) -> int:
        """Xn, with n = 31 meaning XZR (a data register)."""
        return 0 if n == 31 else self.regs.read(_XREGS[n])

    def read_code(self, va: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        return buf.raw if _vmem_read(self._uch, va, UC_PROT_EXEC, buf, size) == 0 else b""

    def read_insn(self, va: int) -> int:
        """The instruction word at ``va`` through the guest's MMU (0, a UDF, if unreadable)."""
        return int.from_bytes(self.read_code(va, 4) or bytes(4), "little")

    def trace_translation(self, address: int):
        return self.mmu.trace(address)

    def translate(self, va: int, is_write: bool = False, execute: bool = False) -> int | None:
        """Guest VA to IPA through the guest's stage 1 at the current EL (descriptors read
        through stage 2, nothing updated), or None when it faults."""
        access = Access.EXECUTE if execute else (Access.WRITE if is_write else Access.READ)
        if exceptions.current_el(self.regs.read(UC_ARM64_REG_PSTATE)) == 0:
            access |= Access.USER
        return self.mmu.va_to_ipa(va, access)

    def engine_address(self, va: int, is_write: bool = False) -> int | None:
        """Where the engine's TLB puts ``va`` (filling it on a miss): an MMIO page's IPA, or
        HOST_PHYS_BASE + the host-physical address of RAM; None when the translation faults."""
        pa = ctypes.c_uint64()
        prot = 2 if is_write else 1  # UC_PROT_WRITE, UC_PROT_READ
        return pa.value if _vmem_translate(self._uch, va, prot, ctypes.byref(pa)) == 0 else None

    def is_mapped_code(self, va: int) -> bool:
        pa = self.translate(va, execute=True)
        return pa is not None and self.vm.memory.is_ram(pa, 4)

    def stage1_walk(self, va: int, access: Access) -> Walk:
        """The guest's stage-1 walk for ``va`` (identity when SCTLR_EL1.M is 0)."""
        try:
            return self.mmu.walk(va, access)[0]
        except Stage2Fault as fault:
            return Walk(None, [], f"{fault.detail} on the stage-1 walk (IPA {fault.gpa:#x})",
                        fault.syndrome & 0x3F)

    def stage1_fault(self, va: int, access: Access) -> int:
        """The fault status code the hardware reports for a stage-1 fault on ``va``."""
        if exceptions.current_el(self.regs.read(UC_ARM64_REG_PSTATE)) == 0:
            access |= Access.USER
        walk = self.stage1_walk(va, access)
        if walk.fault:
            return walk.error_code
        return stage1.FSC_ALIGNMENT  # the walk succeeds: what is left is an alignment fault

    # -- Vcpu ---------------------------------------------------------------------------------
    def run(self, slice_us: int) -> Exit | None:
        self.stop_requested = False
        if self._entry_error:
            # The ERET sets PSTATE.IL and stays at EL2, whose next instruction takes an Illegal
            # Execution state exception (EC 0x0E) to EL2 at ELR_EL2: the guest never runs.
            rec = El2Record(esr(ESR_ELx_EC_ILL))
            self.take_trap(rec, self.regs.read(UC_ARM64_REG_PC))
            return Exit(ExitKind.INVALID_STATE, "ESR_ELx_EC_ILL", rec, detail=self._entry_error)
        if self.wfi_wait and not self._wait(slice_us):
            return None
        mmio = self.mmio
        mmio.sync_claims()
        mmio.forget()
        uc, regs, mmu = self.uc, self.regs, self.mmu
        mmu.context_changed()
        clock = self.clock
        deadline = clock.now() + slice_us / 1e6
        traps, timers, timer = self.sysreg_traps, self.timers, self._slice
        while True:
            error = None
            self._reenter = self._yield = False
            if traps.hooks_stale():
                traps.sync_hooks()
            timers.poll()
            if self.vgic is not None:
                self.vgic.entry(self)  # fold the LRs back and fill them again (KVM's sync / flush)
            if self.events:  # raised while the guest ran (a timer register write, a handler)
                self.deliver_pending()
            timeout = int((deadline - clock.now()) * 1e6)
            if timeout <= 0:
                return None
            due = timers.next_deadline_ns()
            now = clock.now_ns()
            if due is not None:
                timeout = max(1, min(timeout, (due - now) // 1000 + 1))
            self._slice_end_ns = now + timeout * 1000
            pc = regs.read(UC_ARM64_REG_PC)
            if mmu.fetchable(pc):  # else the fetch faults in emu_start, which reports it
                traps.prescan(pc)
                self.tlbi_sites.prescan(pc)
            mmu.pending = None
            self._in_engine = True
            timer.arm(timeout / 1e6)  # emu_start's own timeout starts a thread a call
            try:
                uc.emu_start(pc, UNTIL)
            except UcError as exc:
                error = exc
            finally:
                timer.disarm()
                self._in_engine = False
            hook_error = self.hooks.take_error()
            if hook_error is not None:
                raise hook_error
            mmio.forget()
            if self.stop_requested or self.vm.status is not None:
                return None
            if error is not None:
                fault = mmu.take_pending() if error.errno == UC_ERR_EXCEPTION else None
                if fault is not None:
                    if not self._take_fault(fault):
                        return None
                elif not self._on_error(error):
                    return None
            elif regs.read(UC_ARM64_REG_PC) == UNTIL:  # the guest branched to emu_start's end
                if not run_end_abort(self, UNTIL):
                    self.vm.crash(f"instruction fetch from {UNTIL:#x} faults and so would its vector")
                    return None
            elif self._yield:
                return None  # a trapped WFE yielded to the other vCPUs
            elif mmu.engine.service():
                pass  # stopped only so the engine's TLB could grow
            elif self._reenter:
                pass  # enter again with the new EL2 controls, or to take an interrupt
            elif timer.expired:
                if timers.poll():
                    self.deliver_pending()
                    continue  # the loop ends the slice if its time is up
                return None
            elif self.twi:  # emu_start returns by itself only after WFI
                self.take_trap(WFI_RECORD, regs.read(UC_ARM64_REG_PC) - 4)
                return Exit(ExitKind.HALT, "ESR_ELx_EC_WFx", WFI_RECORD)
            else:  # WFI not trapped: the vCPU waits inside the guest for an interrupt
                self.state = VcpuState.HALTED
                self.halted()
                return None
            if self.vm.status is not None:
                return None

    def request_stop(self) -> None:
        self.stop_requested = True
        self.uc.emu_stop()

    def deliver_pending(self) -> bool:
        pstate = self.regs.read(UC_ARM64_REG_PSTATE)
        for event in self.events:
            kind_mask = _EVENTS.get(event.type)
            if kind_mask is None or pstate & kind_mask[1]:
                continue
            self.events.remove(event)
            kind = kind_mask[0]
            syndrome = esr(ESR_ELx_EC_SERROR) if kind == exceptions.SERROR else None
            exceptions.take_exception(self, kind, self.regs.read(UC_ARM64_REG_PC), syndrome)
            if self._hcr_events:
                self._taken(event)
            if self.gic_cpuif is not None:
                self.gic_cpuif.taken(event)
            self.vm.pm.hook.hvsim_interrupt_acknowledged(vcpu=self, event=event)
            return True
        return False

    def wake(self) -> bool:
        """WFI completes when an interrupt is pending even if PSTATE masks it; the masked one
        stays pending and is taken once unmasked (Arm ARM D1.16.2, "Wait for Interrupt")."""
        if not self.events:
            return False
        self.deliver_pending()
        return True

    # -- PSCI ---------------------------------------------------------------------------------
    def power_on(self, entry: int, context_id: int) -> None:
        """CPU_ON: enter at ``entry`` in EL1h, MMU off, DAIF masked, X0 = context id
        (DEN0022 6.4 "Implementation responsibilities", CPU_ON entry state)."""
        regs = self.regs
        regs.write(UC_ARM64_REG_PSTATE, exceptions.PSTATE_ENTRY)
        self.sysregs.write(sysregs.SCTLR_EL1, self._sctlr_reset)
        self.mmu.context_changed()
        regs.write(UC_ARM64_REG_X0, context_id)
        regs.write(UC_ARM64_REG_PC, entry)
        self.events.clear()
        self._hcr_events.clear()
        self._virtual_lines(self.el2.HCR_EL2)
        if self.gic_cpuif is not None:
            self.gic_cpuif.reset_line()
        self.wfi_wait = False
        self.state = VcpuState.RUNNABLE

    def suspend(self) -> None:
        """PSCI CPU_SUSPEND as standby: the vCPU waits as in WFI, from inside an HVC."""
        self.state = VcpuState.HALTED
        self.halted()
        self.request_stop()

    def power_off(self) -> None:
        self.wfi_wait = False
        self.state = VcpuState.OFF
        self.request_stop()

    # -- hooks --------------------------------------------------------------------------------
    def _intr_hook(self):
        """UC_HOOK_INTR. HVC is the hot path: PC and X0 come in one engine call, the exit's
        arguments are cached per HVC instruction, and the exit is handled in place."""
        ids = (ctypes.c_int * 3)(UC_ARM64_REG_PC, UC_ARM64_REG_X0, UC_ARM64_REG_PSTATE)
        pc_buf, x0_buf, pstate_buf = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_uint64()
        ptrs = (ctypes.c_void_p * 3)(ctypes.addressof(pc_buf), ctypes.addressof(x0_buf),
                                     ctypes.addressof(pstate_buf))
        read2, uch, hvc, dispatch = _reg_read_batch, self._uch, self._hvc, self._dispatch
        fail = self.hooks.fail
        vcpu, excp_hvc, excp_smc = self, exceptions.EXCP_HVC, exceptions.EXCP_SMC
        el2regs = self.el2

        def on_intr(_uc, intno, _ud):
            try:
                if intno == excp_hvc:
                    read2(uch, ids, ptrs, 3)
                    args = hvc.get(pc_buf.value)
                    if args is None:
                        args = hvc[pc_buf.value] = vcpu._hypercall(pc_buf.value)
                    vcpu.smccc_x0 = x0_buf.value
                    # ELR_EL2: an HVC's preferred return is the next instruction, where PC is.
                    vcpu.redirected = False
                    el2regs.record, el2regs._ELR_EL2, el2regs._SPSR_EL2 = args[2], pc_buf.value, pstate_buf.value & 0xFFFF_FFFF
                    dispatch(vcpu, Exit(*args))
                elif intno == excp_smc and vcpu.tsc and exceptions.current_el(
                        vcpu.regs.read(UC_ARM64_REG_PSTATE)) == 1:
                    # HCR_EL2.TSC traps SMC from EL1 only; at EL0 it stays UNDEFINED.
                    read2(uch, ids, ptrs, 3)
                    vcpu.smccc_x0 = x0_buf.value
                    args = vcpu._smc(pc_buf.value)
                    # ELR_EL2: a trapped SMC's preferred return is the SMC itself.
                    vcpu.redirected = False
                    el2regs.record, el2regs._ELR_EL2, el2regs._SPSR_EL2 = args[2], pc_buf.value - 4, pstate_buf.value & 0xFFFF_FFFF
                    dispatch(vcpu, Exit(*args))
                else:
                    vcpu.mmio.forget()
                    exceptions.on_exception(vcpu, intno)
            except BaseException as exc:  # noqa: BLE001 (re-raised by run)
                fail(exc)

        return on_intr

    def _hypercall(self, pc: int) -> tuple:
        """Exit arguments for the HVC before ``pc``: ESR_EL2.ISS is its imm16."""
        imm16 = (self.read_insn(pc - 4) >> 5) & 0xFFFF
        rec = El2Record(esr(ESR_ELx_EC_HVC64, imm16))
        return (ExitKind.HYPERCALL, "ESR_ELx_EC_HVC64", rec, 0, 0, False, imm16)

    def _smc(self, pc: int) -> tuple:
        """Exit arguments for the SMC before ``pc`` trapped by HCR_EL2.TSC: EC 0x17, ISS = imm16
        ("ISS encoding for an exception from SMC instruction execution in AArch64 state").
        Hardware reports ELR_EL2 at the SMC itself and KVM's handle_smc() steps over it; the
        engine is already past it."""
        imm16 = (self.read_insn(pc - 4) >> 5) & 0xFFFF
        rec = El2Record(esr(ESR_ELx_EC_SMC64, imm16))
        return (ExitKind.HYPERCALL, "ESR_ELx_EC_SMC64", rec, 0, 0, False, imm16)

    def _take_fault(self, fault: Exception) -> bool:
        """A translation the MMU refused, with PC at the faulting instruction: a stage-1 abort
        to the guest's vectors, or a stage-2 abort, which is an exit to EL2 handled before the
        instruction is retried. A fetch from an IPA no RAM backs is KVM's: an external abort
        injected into the guest (kvm_inject_pabt). False: the run ends."""
        pc = self.regs.read(UC_ARM64_REG_PC)
        if isinstance(fault, Stage1Abort):
            if deliver_stage1(self, fault):
                return True
            self.vm.crash(f"{fault.detail} on the instruction fetch from {pc:#x}, in the guest's own "
                          f"vector table: the abort cannot be taken")
            return False
        if fault.fetch and not fault.walk and not self.vm.memory.is_ram(fault.gpa):
            if exceptions.instruction_abort_external(self, pc):
                return True
            self.vm.crash(f"instruction fetch from {pc:#x}, where no RAM is, and the guest has "
                          f"no vector table to take the abort (VBAR_EL1 "
                          f"{self.regs.read(UC_ARM64_REG_VBAR_EL1):#x})")
            return False
        self.mmio.forget()
        exit = stage2_exit(self, fault)
        self.take_trap(exit.raw, pc)  # ELR_EL2: the faulting instruction, retried after the handler
        self._dispatch(self, exit)
        return self.vm.status is None

    def _on_error(self, error: UcError) -> bool:
        """emu_start raised: deliver what the guest should see, or end the run (False)."""
        pc = self.regs.read(UC_ARM64_REG_PC)
        if error.errno == UC_ERR_FETCH_UNMAPPED:
            if exceptions.instruction_abort_external(self, pc):
                return True
            self.vm.crash(f"instruction fetch from {pc:#x}, where no RAM is, and the guest has "
                          f"no vector table to take the abort (VBAR_EL1 "
                          f"{self.regs.read(UC_ARM64_REG_VBAR_EL1):#x})")
        else:
            self.vm.crash(f"the engine stopped with {error} at PC {pc:#x}")
        return False

