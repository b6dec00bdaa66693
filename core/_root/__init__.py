"""hvsim: a simulator of hardware-assisted virtualization (Intel VT-x, AMD SVM, ARMv8 EL2).

Plugin authors start here::

    from hvsim import hookimpl

    @hookimpl
    def hvsim_vm_created(vm):
        vm.bus.add_port(0x510, 2, MyDevice(), "my-device")

and register the module under the ``hvsim.plugins`` entry-point group in their package's
pyproject.toml. The hook specifications are in :mod:`hvsim.core.hookspecs`.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("hvsim")

__all__ = ["hookimpl", "__version__"]
