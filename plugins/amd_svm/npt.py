"""Nested paging: the guest-physical -> host-physical walk (AMD APM Vol. 2 15.25).

With NP_ENABLE set, N_CR3 names the nested page table, in the host's paging format: hvsim's
host runs in long mode, so it is a 4-level table with the entries of ordinary x86 paging
(15.25.5). Every nested access is a user access (an NPT entry must have U/S set), and guest
page-table accesses are treated as user writes, which is how the processor may set their
accessed and dirty bits. A failure is #VMEXIT(NPF) with EXITINFO1 the #PF-style error code plus
bit 32 (the final guest-physical address) or bit 33 (a guest page-table access), and EXITINFO2
the guest-physical address (15.25.6).
"""

from __future__ import annotations

import struct

from hvsim.core.memory import Access, WalkStep
from hvsim.core.mmu import PERM_R, PERM_W, PERM_X, Stage2Fault
from hvsim.plugins.x86 import paging

HOST_CR0 = paging.CR0_PG | paging.CR0_WP
HOST_CR4 = paging.CR4_PAE
HOST_EFER = paging.EFER_LMA | paging.EFER_NXE
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class Npt:
    """One nested page table as a logical processor uses it. Guest-physical mappings it derived
    are cached (``cache``) until the VMM flushes the guest's TLB entries (TLB_CONTROL, INVLPGA),
    as the processor may keep them."""

    def __init__(self, host, ncr3: int) -> None:
        self.host = host
        self.ncr3 = ncr3
        self.cache: dict[int, tuple[int, int, bool]] = {}
        self.walk_writes = True  # guest page-table accesses are user writes (15.25.5)

    def _read(self, size: int):
        unpack, view, limit = (_U32 if size == 4 else _U64).unpack_from, self.host.view, self.host.size

        def read(hpa: int) -> int:
            if hpa + size > limit:
                raise Stage2Fault(hpa, f"nested page table entry at {hpa:#x} is outside host memory",
                                  misconfig=True, syndrome=paging.PFEC_P | paging.PFEC_RSVD | paging.PFEC_U)
            return unpack(view, hpa)[0]

        return read

    def _update(self, hpa: int, size: int, value: int) -> None:
        (_U32 if size == 4 else _U64).pack_into(self.host.view, hpa, value)

    def translate(self, gpa: int, write: bool = False, fetch: bool = False, walk: bool = False) -> tuple[int, int]:
        """(host-physical address, permissions) or :class:`Stage2Fault` with the NPF error code."""
        if walk:
            write = True
        page = gpa >> 12
        hit = self.cache.get(page)
        need = PERM_X if fetch else (PERM_W if write else PERM_R)
        if hit is not None:
            hpa, perms, dirty = hit
            if perms & need and (dirty or not write):
                return hpa | (gpa & 0xFFF), perms if dirty else perms & ~PERM_W
        access = Access.USER | (Access.EXECUTE if fetch else Access.WRITE if write else Access.READ)
        try:
            w = paging.walk(gpa, access, HOST_CR0, self.ncr3, HOST_CR4, HOST_EFER, 3,
                            self._read(4), self._read(8), self._update, record=False)
        except Stage2Fault as fault:
            fault.gpa, fault.write, fault.fetch, fault.walk = gpa, write, fetch, walk
            raise
        if w.fault:
            raise Stage2Fault(gpa, f"NPF: {w.fault.removeprefix('#PF: ')}", write=write, fetch=fetch, walk=walk,
                              syndrome=w.error_code)
        perms = PERM_R | (PERM_W if w.writable else 0) | (PERM_X if w.executable else 0)
        self.cache[page] = (w.address & ~0xFFF, perms, w.dirty)
        # Until the nested leaf's dirty bit is set, a write must walk again (and set it).
        return w.address, perms if w.dirty else perms & ~PERM_W

    def steps(self, gpa: int) -> tuple[list[WalkStep], int | None, str | None]:
        """The entries a walk of ``gpa`` reads, its result and any fault, without side effects."""
        try:
            w = paging.walk(gpa, Access.USER | Access.READ, HOST_CR0, self.ncr3, HOST_CR4, HOST_EFER, 3,
                            self._read(4), self._read(8))
        except Stage2Fault as fault:
            return [], None, fault.detail
        return w.steps, w.address, w.fault
