"""hvsim's hook specifications: the contract a plugin author reads first.

Every hook hvsim calls is declared here, with an ``hvsim_`` name, grouped the way KVM's
``kvm_x86_ops`` groups vendor operations: registration, mode switches, two-stage translation,
interrupt virtualization and I/O paths.

Hot-path rule: hooks that would fire on every exit (``hvsim_vm_exit``, ``hvsim_vm_entry``,
``hvsim_port_io``, ``hvsim_mmio``) are resolved once when a VM is built. A VM calls a hook per
exit only when some plugin implements it, and handler tables (``hvsim_exit_handlers``) are
plain dictionaries filled at build time, so an exit costs a dictionary lookup, not a pluggy call.

Write an implementation with ``from hvsim import hookimpl`` and a function of the same name;
pluggy lets an implementation accept any subset of the arguments listed here.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("hvsim")


# --------------------------------------------------------------------------------------------
# Registration: what exists. Called once, when the plugin manager is first asked.
# --------------------------------------------------------------------------------------------


@hookspec
def hvsim_register_archs(registry):
    """Register architecture plugins.

    Called once per plugin manager. ``registry`` is an :class:`hvsim.core.registry.ArchRegistry`;
    call ``registry.add(arch)`` with an :class:`hvsim.core.arch.Arch` subclass. Its ``name``
    (``intel_vtx``, ``amd_svm``, ``arm_el2``) is what ``hvsim run --arch`` selects. Two plugins
    adding the same name is an error. Returns nothing.
    """


@hookspec
def hvsim_register_devices(registry):
    """Register device models by name.

    Called once per plugin manager. ``registry`` is an :class:`hvsim.core.registry.DeviceRegistry`;
    call ``registry.add(name, factory)`` where ``factory(vm, **params)`` returns a device object.
    A platform (``plugins/x86/layout.py``, ``plugins/arm_el2/layout.py``) instantiates devices by
    these names and tells them where they sit. Returns nothing.
    """


@hookspec
def hvsim_register_commands(app):
    """Add sub-commands to the ``hvsim`` command line.

    ``app`` is the :class:`typer.Typer` application; call ``app.command()(fn)`` or
    ``app.add_typer(...)``. Called once when the CLI starts. Returns nothing.
    """


@hookspec
def hvsim_vm_created(vm):
    """A VM has been built: its architecture, memory and platform devices exist.

    Called once per VM, before its vCPUs are created and the image is loaded (so the devices
    a plugin claims here are mapped into every vCPU's engine). Plugins attach their own devices here
    (``vm.bus.add_port(...)``, ``vm.bus.add_mmio(...)``), add exit observers, or read
    ``vm.config``. Returns nothing.
    """


@hookspec
def hvsim_spec_tables(arch):
    """Return the architecture's reference tables for ``hvsim spec``.

    ``arch`` is the architecture name. An implementation for that architecture returns a
    dict ``{table_name: SpecTable}`` (see :class:`hvsim.core.spec.SpecTable`); others return
    None. All non-None results are merged.
    """


# --------------------------------------------------------------------------------------------
# Mode switches: entering the guest, leaving it, handling the exit.
# --------------------------------------------------------------------------------------------


@hookspec
def hvsim_vm_entry(vcpu):
    """The vCPU is about to enter guest mode (VMLAUNCH/VMRESUME, VMRUN, ERET to EL1).

    Fires on every entry from the run loop (not when an exit was completed inside the engine
    without leaving it). Observers only; the return value is ignored. Only called when at
    least one plugin implements it.
    """


@hookspec
def hvsim_vm_exit(vcpu, exit):
    """The vCPU has left guest mode; ``exit`` is an :class:`hvsim.core.exits.Exit`.

    Fires for every exit, before it is handled, with the architectural record filled in
    (``exit.raw``: VMX exit reason and qualification, SVM EXITCODE/EXITINFO1/2, ESR_EL2 and
    FAR/HPFAR_EL2). Observers only (tracing, statistics, fuzzing oracles); the return value is
    ignored. Only called when at least one plugin implements it.
    """


@hookspec
def hvsim_exit_handlers(vm, registry):
    """Register exit handlers for a VM, like KVM's ``kvm_vmx_exit_handlers`` table.

    Called once when the VM is built. ``registry`` is an
    :class:`hvsim.core.exits.ExitHandlerRegistry`; call
    ``registry.add(ExitKind.X, handler)`` where ``handler(vcpu, exit)`` handles the exit and
    returns None. A later registration for the same kind replaces the earlier one, so a user
    plugin can override a built-in handler; to wrap it instead, fetch it with
    ``registry.get(kind)`` before adding yours. Plugins are called in pluggy's order (user
    plugins after the built-in ones). An exit kind with no handler ends the run as a guest
    crash with an "unhandled exit" message.
    """


# --------------------------------------------------------------------------------------------
# Two-stage translation: guest stage 1, the hypervisor's stage 2, TLB invalidation.
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hvsim_stage1_walk(vcpu, address, access):
    """Translate a guest virtual address through the guest's own page tables (stage 1).

    ``access`` is an :class:`hvsim.core.memory.Access` (read / write / execute, user or
    supervisor). Returns an :class:`hvsim.core.memory.Walk` with the guest-physical address and
    every table entry read, or a Walk whose ``fault`` is set. First non-None result wins; the
    architecture plugin implements it (x86 4-level/PAE/32-bit paging, VMSAv8-64).
    """


@hookspec(firstresult=True)
def hvsim_stage2_translate(vm, gpa, access):
    """Translate a guest-physical address to a host-physical one (EPT, NPT, stage 2).

    Returns the host-physical address, or None when the hypervisor's tables leave ``gpa``
    unmapped (which the architecture reports as an EPT violation, NPF or stage-2 abort).
    First non-None result wins. The foundation maps RAM slots directly (like KVM memslots);
    the memory-virtualization plugins walk real tables.
    """


@hookspec
def hvsim_tlb_invalidate(vm, scope):
    """Translations cached for ``vm`` must be dropped.

    ``scope`` is a :class:`hvsim.core.memory.TlbScope` (all, one tag such as a VPID / ASID /
    VMID, or one address). Every implementation is called; none returns a value.
    """


# --------------------------------------------------------------------------------------------
# Interrupt virtualization: inject, acknowledge / EOI, pending query.
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hvsim_inject_event(vcpu, event):
    """Queue an event (interrupt, NMI, exception, virtual IRQ/FIQ/SError) for a vCPU.

    ``event`` is an :class:`hvsim.core.exits.Event`. The architecture plugin delivers it at the
    next VM entry when the guest can take it (x86 RFLAGS.IF and interruptibility, arm64
    PSTATE.DAIF), through the guest's IDT or VBAR_EL1, and returns True when it accepted the
    event. First non-None result wins.
    """


@hookspec
def hvsim_interrupt_acknowledged(vcpu, event):
    """The guest has taken ``event`` (delivery through its vector table finished).

    Interrupt controllers use it to move a vector from pending to in-service (the
    acknowledge of APICv / AVIC / the GIC's ICC_IAR). Every implementation is called.
    """


@hookspec(firstresult=True)
def hvsim_interrupt_pending(vcpu):
    """Return the highest-priority deliverable event for ``vcpu``, or None.

    Asked by the run loop before it resumes a halted vCPU (HLT / WFI). First non-None result
    wins.
    """


# --------------------------------------------------------------------------------------------
# I/O paths: port I/O, MMIO, DMA through an IOMMU.
# --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def hvsim_port_io(vcpu, port, size, is_write, value):
    """A port-I/O access that no device on the bus claimed.

    ``size`` is 1, 2 or 4 bytes; ``value`` is the written value (None for a read). Return the
    value read (an int) for an IN, or True to say a write was consumed. Returning None
    everywhere gives the PC's open-bus answer: reads return all ones, writes are dropped.
    Only called when at least one plugin implements it.
    """


@hookspec(firstresult=True)
def hvsim_mmio(vcpu, address, size, is_write, value):
    """An MMIO access to a guest-physical address that no device claimed.

    Same conventions as :func:`hvsim_port_io`. Returning None everywhere makes the access
    unassigned (reads all-ones, writes dropped, counted in ``vm.stats.unassigned``), as QEMU
    does; with ``VM(..., strict_mmio=True)`` it is an unhandled MMIO exit that ends the run as
    a guest crash.
    """


@hookspec(firstresult=True)
def hvsim_dma_translate(vm, device, iova, size, is_write):
    """Translate a device's DMA address (IOVA) to a host-physical address.

    Called when a device reaches memory through ``vm.dma(device)``. The IOMMU plugins
    (VT-d, AMD-Vi, SMMUv3) implement it; returning None everywhere means no IOMMU is present
    and the IOVA is a guest-physical address. To refuse the access, raise
    :class:`hvsim.core.memory.DmaFault`.
    """
