"""The virtual machine control block: 4 KiB of memory, laid out as AMD APM Vol. 2 Appendix B says.

The control area (Table B-1, offsets 0x000-0x3FF) holds the intercept vectors, the IOPM/MSRPM
addresses, the guest ASID, the virtual-interrupt controls, the #VMEXIT record (EXITCODE,
EXITINFO1, EXITINFO2, EXITINTINFO, nRIP), EVENTINJ, nested paging and AVIC pointers. The
state-save area (Table B-2, from 0x400) holds the guest's segment, control, debug and system
registers. A :class:`Vmcb` is a window on those bytes, wherever they are (any object with
``read(addr, n)`` and ``write(addr, data)``: :class:`~hvsim.core.memory.HostMemory` at a
host-physical address, :class:`~hvsim.core.memory.GuestMemory` at a guest-physical one), so a
test can read exactly what the processor would.

Also here: the intercept bits and the exit code each one produces (15.7-15.14), EVENTINJ and
EXITINTINFO (15.20, 15.7.2), and the VMCB clean bits with a model of the processor's VMCB
cache (15.15.3).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from .exits import EXIT_CODES

VMCB_SIZE = 0x1000
SAVE_AREA = 0x400  # the state-save area starts here (Table B-2 offsets are relative to it)
VMEXIT_INVALID = 0xFFFF_FFFF_FFFF_FFFF  # EXITCODE -1, as the 64-bit field holds it
_M64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Field:
    """One VMCB field: a little-endian unit of ``width`` bytes at ``offset`` from the VMCB start,
    or ``bits`` bits of it from ``lsb`` (V_IRQ, NP_ENABLE, ...). ``clean`` is the VMCB clean bit
    that lets the processor keep a cached copy of it (None: always loaded from memory)."""

    name: str
    offset: int
    width: int
    area: str
    clean: int | None = None
    lsb: int = 0
    bits: int = 0
    doc: str = ""

    @property
    def mask(self) -> int:
        return (1 << (self.bits or 8 * self.width)) - 1

    @property
    def bit_range(self) -> str:
        """The bits within the unit at ``offset``, as the APM writes them ("63:0", "8")."""
        hi = self.lsb + (self.bits or 8 * self.width) - 1
        return str(hi) if hi == self.lsb else f"{hi}:{self.lsb}"


# -- VMCB clean bits (APM 15.15.3 "VMCB Clean Field") ----------------------------------------------
class Clean(IntEnum):
    I = 0  # intercept vectors, TSC_OFFSET, pause filter count and threshold
    IOPM = 1  # IOPM_BASE_PA, MSRPM_BASE_PA
    ASID = 2
    TPR = 3  # V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, V_INTR_VECTOR (0x060-0x067)
    NP = 4  # NP_ENABLE, N_CR3, G_PAT
    CRX = 5  # CR0, CR3, CR4, EFER
    DRX = 6  # DR6, DR7
    DT = 7  # GDTR, IDTR
    SEG = 8  # ES, CS, SS, DS (selector, attributes, limit, base), CPL
    CR2 = 9
    LBR = 10  # DBGCTL, BR_FROM, BR_TO, LASTEXCPFROM, LASTEXCPTO
    AVIC = 11  # AVIC_APIC_BAR, APIC backing page, logical and physical table pointers


CLEAN_ALL = (1 << (max(Clean) + 1)) - 1


def _c(name, offset, width, clean=None, doc="", lsb=0, bits=0) -> Field:
    return Field(name, offset, width, "control", clean, lsb, bits, doc)


def _s(name, offset, width, clean=None, doc="", lsb=0, bits=0) -> Field:
    return Field(name, SAVE_AREA + offset, width, "save", clean, lsb, bits, doc)


_SEGMENTS = ("ES", "CS", "SS", "DS", "FS", "GS", "GDTR", "LDTR", "IDTR", "TR")
_SEG_CLEAN = {"ES": Clean.SEG, "CS": Clean.SEG, "SS": Clean.SEG, "DS": Clean.SEG,
              "GDTR": Clean.DT, "IDTR": Clean.DT}


def _segment_fields() -> list[Field]:
    out = []
    for i, seg in enumerate(_SEGMENTS):
        base, clean = 0x10 * i, _SEG_CLEAN.get(seg)
        if seg not in ("GDTR", "IDTR"):  # the descriptor-table registers have no selector/attributes
            out += [_s(f"{seg}_SELECTOR", base, 2, clean), _s(f"{seg}_ATTRIB", base + 2, 2, clean)]
        out += [_s(f"{seg}_LIMIT", base + 4, 4, clean), _s(f"{seg}_BASE", base + 8, 8, clean)]
    return out


# Appendix B, Table B-1 (control area) and Table B-2 (state-save area, offsets from 0x400).
# Cross-checked against Linux arch/x86/include/asm/svm.h (struct vmcb_control_area, vmcb_save_area).
FIELDS: tuple[Field, ...] = (
    _c("INTERCEPT_CR_READ", 0x000, 2, Clean.I, "intercept reads of CR0-CR15 (bit n = CRn)"),
    _c("INTERCEPT_CR_WRITE", 0x002, 2, Clean.I, "intercept writes of CR0-CR15"),
    _c("INTERCEPT_DR_READ", 0x004, 2, Clean.I, "intercept reads of DR0-DR15"),
    _c("INTERCEPT_DR_WRITE", 0x006, 2, Clean.I, "intercept writes of DR0-DR15"),
    _c("INTERCEPT_EXCEPTIONS", 0x008, 4, Clean.I, "intercept exception vectors 0-31"),
    _c("INTERCEPT_MISC1", 0x00C, 4, Clean.I, "INTR ... SHUTDOWN (see INTERCEPTS)"),
    _c("INTERCEPT_MISC2", 0x010, 4, Clean.I, "VMRUN ... CR write traps (see INTERCEPTS)"),
    _c("INTERCEPT_MISC3", 0x014, 4, Clean.I, "INVLPGB ... (see INTERCEPTS)"),
    _c("PAUSE_FILTER_THRESHOLD", 0x03C, 2, Clean.I),
    _c("PAUSE_FILTER_COUNT", 0x03E, 2, Clean.I),
    _c("IOPM_BASE_PA", 0x040, 8, Clean.IOPM, "physical base of the IOPM; bits 11:0 ignored"),
    _c("MSRPM_BASE_PA", 0x048, 8, Clean.IOPM, "physical base of the MSRPM; bits 11:0 ignored"),
    _c("TSC_OFFSET", 0x050, 8, Clean.I),
    _c("GUEST_ASID", 0x058, 4, Clean.ASID),
    _c("TLB_CONTROL", 0x05C, 1, None, "0 nothing, 1 flush all, 3 this guest's ASID, 7 its non-global"),
    _c("V_TPR", 0x060, 8, Clean.TPR, "virtual TPR", 0, 8),
    _c("V_IRQ", 0x060, 8, Clean.TPR, "a virtual interrupt is pending", 8, 1),
    _c("V_GIF", 0x060, 8, Clean.TPR, "virtual GIF value", 9, 1),
    _c("V_NMI", 0x060, 8, Clean.TPR, "virtual NMI pending", 11, 1),
    _c("V_NMI_MASK", 0x060, 8, Clean.TPR, "virtual NMI masked", 12, 1),
    _c("V_INTR_PRIO", 0x060, 8, Clean.TPR, "priority of the virtual interrupt", 16, 4),
    _c("V_IGN_TPR", 0x060, 8, Clean.TPR, "the virtual interrupt ignores the TPR", 20, 1),
    _c("V_INTR_MASKING", 0x060, 8, Clean.TPR, "virtualize TPR and RFLAGS.IF masking", 24, 1),
    _c("V_GIF_ENABLE", 0x060, 8, Clean.TPR, "virtual GIF enabled", 25, 1),
    _c("V_NMI_ENABLE", 0x060, 8, Clean.TPR, "virtual NMI enabled", 26, 1),
    _c("X2AVIC_ENABLE", 0x060, 8, Clean.TPR, "x2APIC mode AVIC", 30, 1),
    _c("AVIC_ENABLE", 0x060, 8, Clean.TPR, "AVIC enabled", 31, 1),
    _c("V_INTR_VECTOR", 0x064, 1, Clean.TPR, "vector of the virtual interrupt (bits 39:32 of 0x060)"),
    _c("INTERRUPT_SHADOW", 0x068, 8, None, "guest is in an interrupt shadow", 0, 1),
    _c("GUEST_INTERRUPT_MASK", 0x068, 8, None, "value of the guest's RFLAGS.IF (SEV-ES)", 1, 1),
    _c("EXITCODE", 0x070, 8),
    _c("EXITINFO1", 0x078, 8),
    _c("EXITINFO2", 0x080, 8),
    _c("EXITINTINFO", 0x088, 8, None, "event being delivered when the #VMEXIT happened"),
    _c("NP_ENABLE", 0x090, 8, Clean.NP, "enable nested paging", 0, 1),
    _c("SEV_ENABLE", 0x090, 8, None, "enable Secure Encrypted Virtualization", 1, 1),
    _c("SEV_ES_ENABLE", 0x090, 8, None, "enable encrypted state for SEV", 2, 1),
    _c("GMET_ENABLE", 0x090, 8, None, "guest-mode execute trap", 3, 1),
    _c("AVIC_APIC_BAR", 0x098, 8, Clean.AVIC, "bits 51:0"),
    _c("GHCB_PA", 0x0A0, 8, None, "guest physical address of the GHCB (SEV-ES)"),
    _c("EVENTINJ", 0x0A8, 8, None, "event injection (15.20)"),
    _c("N_CR3", 0x0B0, 8, Clean.NP, "nested page table root"),
    _c("LBR_VIRTUALIZATION_ENABLE", 0x0B8, 8, None, "", 0, 1),
    _c("VIRTUAL_VMLOAD_VMSAVE_ENABLE", 0x0B8, 8, None, "", 1, 1),
    _c("VMCB_CLEAN", 0x0C0, 4, None, "VMCB clean bits (15.15.3)"),
    _c("NRIP", 0x0C8, 8, None, "next sequential instruction pointer (15.7.1)"),
    _c("GUEST_INSN_BYTES_FETCHED", 0x0D0, 1, None, "number of bytes in GUEST_INSN_BYTES"),
    _c("GUEST_INSN_BYTES", 0x0D1, 15, None, "instruction bytes for decode assists (15.33.4)"),
    _c("AVIC_APIC_BACKING_PAGE", 0x0E0, 8, Clean.AVIC),
    _c("AVIC_LOGICAL_TABLE", 0x0F0, 8, Clean.AVIC),
    _c("AVIC_PHYSICAL_TABLE", 0x0F8, 8, Clean.AVIC, "pointer bits 51:12, max index bits 7:0"),
    _c("VMSA", 0x108, 8, None, "VM save area for SEV-ES guests"),
    _c("BUS_LOCK_THRESHOLD", 0x120, 2),
    _c("ALLOWED_SEV_FEATURES", 0x138, 8),
    _c("GUEST_SEV_FEATURES", 0x140, 8),
    *_segment_fields(),
    _s("VMPL", 0x0CA, 1),
    _s("CPL", 0x0CB, 1, Clean.SEG),
    _s("EFER", 0x0D0, 8, Clean.CRX),
    _s("CR4", 0x148, 8, Clean.CRX),
    _s("CR3", 0x150, 8, Clean.CRX),
    _s("CR0", 0x158, 8, Clean.CRX),
    _s("DR7", 0x160, 8, Clean.DRX),
    _s("DR6", 0x168, 8, Clean.DRX),
    _s("RFLAGS", 0x170, 8),
    _s("RIP", 0x178, 8),
    _s("RSP", 0x1D8, 8),
    _s("S_CET", 0x1E0, 8),
    _s("SSP", 0x1E8, 8),
    _s("ISST_ADDR", 0x1F0, 8),
    _s("RAX", 0x1F8, 8),
    _s("STAR", 0x200, 8),
    _s("LSTAR", 0x208, 8),
    _s("CSTAR", 0x210, 8),
    _s("SFMASK", 0x218, 8),
    _s("KERNEL_GS_BASE", 0x220, 8),
    _s("SYSENTER_CS", 0x228, 8),
    _s("SYSENTER_ESP", 0x230, 8),
    _s("SYSENTER_EIP", 0x238, 8),
    _s("CR2", 0x240, 8, Clean.CR2),
    _s("G_PAT", 0x268, 8, Clean.NP),
    _s("DBGCTL", 0x270, 8, Clean.LBR),
    _s("BR_FROM", 0x278, 8, Clean.LBR),
    _s("BR_TO", 0x280, 8, Clean.LBR),
    _s("LASTEXCPFROM", 0x288, 8, Clean.LBR),
    _s("LASTEXCPTO", 0x290, 8, Clean.LBR),
    _s("SPEC_CTRL", 0x2E0, 8),
)
FIELD: dict[str, Field] = {f.name: f for f in FIELDS}
# (pack_into, offset, largest value) of the fields that fill their unit: VMCB.state_writer
_PACKERS = {f.name: (struct.Struct("<" + {1: "B", 2: "H", 4: "I", 8: "Q"}[f.width]).pack_into, f.offset, f.mask)
            for f in FIELDS if not f.bits and f.lsb == 0 and f.width in (1, 2, 4, 8)}

# What the processor writes back into the VMCB on #VMEXIT (15.6), so its cached copy matches.
WRITTEN_AT_VMEXIT = frozenset(
    [f"{s}_{p}" for s in ("ES", "CS", "SS", "DS") for p in ("SELECTOR", "ATTRIB", "LIMIT", "BASE")]
    + ["GDTR_LIMIT", "GDTR_BASE", "IDTR_LIMIT", "IDTR_BASE", "CPL", "EFER", "CR0", "CR2", "CR3",
       "CR4", "DR6", "DR7", "RFLAGS", "RIP", "RSP", "RAX", "V_TPR", "V_IRQ", "INTERRUPT_SHADOW",
       "EXITCODE", "EXITINFO1", "EXITINFO2", "EXITINTINFO", "NRIP"])


# -- intercepts (15.7-15.14; Table B-1 offsets 0x000-0x014; exit codes from Appendix C) ------------
@dataclass(frozen=True, slots=True)
class Intercept:
    name: str
    offset: int  # the 32-bit intercept word: 0x000, 0x004, ... 0x014
    bit: int
    exit_code: int

    @property
    def index(self) -> int:
        """Bit number in the 192-bit intercept vector (Linux's INTERCEPT_* numbering)."""
        return self.offset * 8 + self.bit

    @property
    def exit_name(self) -> str:
        return f"VMEXIT_{EXIT_CODES.get(self.exit_code, self.name)}"


_MISC1 = ("INTR", "NMI", "SMI", "INIT", "VINTR", "CR0_SEL_WRITE", "IDTR_READ", "GDTR_READ",
          "LDTR_READ", "TR_READ", "IDTR_WRITE", "GDTR_WRITE", "LDTR_WRITE", "TR_WRITE", "RDTSC",
          "RDPMC", "PUSHF", "POPF", "CPUID", "RSM", "IRET", "INTN", "INVD", "PAUSE", "HLT",
          "INVLPG", "INVLPGA", "IOIO_PROT", "MSR_PROT", "TASK_SWITCH", "FERR_FREEZE", "SHUTDOWN")
_MISC2 = ("VMRUN", "VMMCALL", "VMLOAD", "VMSAVE", "STGI", "CLGI", "SKINIT", "RDTSCP", "ICEBP",
          "WBINVD", "MONITOR", "MWAIT", "MWAIT_CONDITIONAL", "XSETBV", "RDPRU", "EFER_WRITE_TRAP")
_MISC3 = ("INVLPGB", "INVLPGB_ILLEGAL", "INVPCID", "MCOMMIT", "TLBSYNC", "BUSLOCK", "IDLE_HLT")

INTERCEPTS: tuple[Intercept, ...] = (
    *(Intercept(f"CR{n}_READ", 0x000, n, 0x00 + n) for n in range(16)),
    *(Intercept(f"CR{n}_WRITE", 0x000, 16 + n, 0x10 + n) for n in range(16)),
    *(Intercept(f"DR{n}_READ", 0x004, n, 0x20 + n) for n in range(16)),
    *(Intercept(f"DR{n}_WRITE", 0x004, 16 + n, 0x30 + n) for n in range(16)),
    *(Intercept(f"EXCP{n}", 0x008, n, 0x40 + n) for n in range(32)),
    *(Intercept(name, 0x00C, bit, 0x60 + bit) for bit, name in enumerate(_MISC1)),
    *(Intercept(name, 0x010, bit, 0x80 + bit) for bit, name in enumerate(_MISC2)),
    *(Intercept(f"CR{n}_WRITE_TRAP", 0x010, 16 + n, 0x90 + n) for n in range(16)),
    *(Intercept(name, 0x014, bit, 0xA0 + bit) for bit, name in enumerate(_MISC3)),
)
INTERCEPT: dict[str, Intercept] = {i.name: i for i in INTERCEPTS}
_INTERCEPT_INDEX = {name: i.index for name, i in INTERCEPT.items()}
INTERCEPT_VECTOR_BYTES = 0x18  # 0x000-0x017: six 32-bit words


# -- EVENTINJ and EXITINTINFO (15.20; 15.7.2) ------------------------------------------------------
class EventType(IntEnum):
    """EVENTINJ.TYPE, bits 10:8 (15.20); the values 1, 5, 6 and 7 are reserved."""

    INTR = 0  # external or virtual interrupt
    NMI = 2
    EXCEPTION = 3  # fault or trap
    SOFTWARE_INT = 4  # INTn instruction


EVENT_VECTOR_MASK = 0xFF
EVENT_TYPE_SHIFT = 8
EVENT_EV = 1 << 11  # an error code is pushed
EVENT_V = 1 << 31  # the field is valid
EVENT_ERRORCODE_SHIFT = 32


@dataclass(frozen=True, slots=True)
class Event:
    """An EVENTINJ or EXITINTINFO value: vector 7:0, TYPE 10:8, EV 11, V 31, ERRORCODE 63:32."""

    vector: int
    type: int
    error_code_valid: bool = False
    valid: bool = True
    error_code: int = 0

    def encode(self) -> int:
        return ((self.vector & EVENT_VECTOR_MASK) | (self.type & 7) << EVENT_TYPE_SHIFT
                | (EVENT_EV if self.error_code_valid else 0) | (EVENT_V if self.valid else 0)
                | (self.error_code & 0xFFFF_FFFF) << EVENT_ERRORCODE_SHIFT)

    @classmethod
    def decode(cls, value: int) -> Event:
        return cls(value & EVENT_VECTOR_MASK, (value >> EVENT_TYPE_SHIFT) & 7, bool(value & EVENT_EV),
                   bool(value & EVENT_V), (value >> EVENT_ERRORCODE_SHIFT) & 0xFFFF_FFFF)


@dataclass(frozen=True, slots=True)
class Segment:
    """A VMCB segment: selector, attributes (descriptor bits 47:40 in 7:0, bits 55:52 in 11:8),
    limit and base (Table B-2)."""

    selector: int
    attrib: int
    limit: int
    base: int

    @property
    def l(self) -> bool:  # descriptor L (64-bit code), attribute bit 9
        return bool(self.attrib >> 9 & 1)

    @property
    def d(self) -> bool:  # descriptor D/B, attribute bit 10
        return bool(self.attrib >> 10 & 1)


# -- access ----------------------------------------------------------------------------------------
_U64 = struct.Struct("<Q")
_EXIT_RECORD = struct.Struct("<QQQQ")  # EXITCODE, EXITINFO1, EXITINFO2, EXITINTINFO: 0x070-0x08F


def _decode(raw: bytes, f: Field) -> int | bytes:
    if f.name == "GUEST_INSN_BYTES":
        return bytes(raw)
    return (int.from_bytes(raw, "little") >> f.lsb) & f.mask


def field_value(page: bytes, f: Field) -> int | bytes:
    """A field's value decoded from a copy of the 4 KiB VMCB."""
    return _decode(page[f.offset:f.offset + f.width], f)


def direct_view(mem, pa: int, size: int):
    """(memoryview, offset) over ``size`` bytes at ``pa``, bounds-checked once, or (None, pa).

    For the run loop's hot paths only: the memory objects check every access, and an exit that
    writes four fields should not pay for four checks."""
    host = getattr(mem, "host", None)
    if host is not None and hasattr(mem, "translate"):  # GuestMemory: one slot must hold it all
        return host.view, mem.translate(pa, size)
    view = getattr(mem, "view", None)
    if view is not None:  # HostMemory: its read() is the bounds check
        mem.read(pa, size)
        return view, pa
    return None, pa


class Vmcb:
    """The VMCB at physical address ``pa`` in ``mem``: fields by their APM names, intercepts by name.

    >>> vmcb = Vmcb(host, 0x10_0000); vmcb["GUEST_ASID"] = 1; vmcb.set_intercept("VMRUN")
    """

    __slots__ = ("mem", "pa")

    def __init__(self, mem, pa: int) -> None:
        if pa & 0xFFF:
            raise ValueError(f"a VMCB is 4 KiB aligned (15.5.1); {pa:#x} is not")
        self.mem = mem
        self.pa = pa

    # fields
    def read(self, name: str) -> int | bytes:
        f = FIELD[name]
        return _decode(self.mem.read(self.pa + f.offset, f.width), f)

    def write(self, name: str, value) -> None:
        f = FIELD[name]
        if name == "GUEST_INSN_BYTES":
            self.mem.write(self.pa + f.offset, bytes(value).ljust(f.width, b"\0")[:f.width])
            return
        if value < 0 and not f.bits:
            value &= f.mask  # EXITCODE = -1 is VMEXIT_INVALID, 0xFFFF_FFFF_FFFF_FFFF
        if not 0 <= value <= f.mask:
            raise ValueError(f"VMCB.{name} holds {f.bits or 8 * f.width} bits; {value:#x} does not fit")
        if f.bits:
            unit = int.from_bytes(self.mem.read(self.pa + f.offset, f.width), "little")
            value = (unit & ~(f.mask << f.lsb)) | value << f.lsb
        self.mem.write(self.pa + f.offset, value.to_bytes(f.width, "little"))

    __getitem__ = read
    __setitem__ = write

    def state_writer(self) -> Callable[[str, int], None]:
        """``write(name, value)`` for the #VMEXIT state save: whole-unit fields packed straight
        into the VMCB's bytes (bounds checked once, here); bit fields and values that do not
        fit take :meth:`write`, which checks them."""
        view, base = direct_view(self.mem, self.pa, VMCB_SIZE)
        if view is None:
            return self.write
        packers, checked = _PACKERS, self.write

        def write(name: str, value: int) -> None:
            entry = packers.get(name)
            if entry is None or not 0 <= value <= entry[2]:
                checked(name, value)
            else:
                entry[0](view, base + entry[1], value)

        return write

    def page(self) -> bytes:
        return self.mem.read(self.pa, VMCB_SIZE)

    def snapshot(self) -> dict[str, int | bytes]:
        """Every field, decoded from one read of the 4 KiB."""
        page = self.page()
        return {f.name: field_value(page, f) for f in FIELDS}

    def clear(self) -> None:
        self.mem.write(self.pa, bytes(VMCB_SIZE))

    def segment(self, seg: str) -> Segment:
        r = self.read
        sel = r(f"{seg}_SELECTOR") if f"{seg}_SELECTOR" in FIELD else 0
        att = r(f"{seg}_ATTRIB") if f"{seg}_ATTRIB" in FIELD else 0
        return Segment(sel, att, r(f"{seg}_LIMIT"), r(f"{seg}_BASE"))

    def set_segment(self, seg: str, s: Segment, write: Callable[[str, int], None] | None = None) -> None:
        write = write or self.write
        names = _SEGMENT_NAMES.get(seg) or _segment_names(seg)
        if names[0] is not None:
            write(names[0], s.selector)
            write(names[1], s.attrib)
        write(names[2], s.limit)
        write(names[3], s.base)

    # intercepts
    def intercept_vector(self) -> int:
        """All intercept words 0x000-0x017 as one integer; test bit ``INTERCEPT[name].index``."""
        return int.from_bytes(self.mem.read(self.pa, INTERCEPT_VECTOR_BYTES), "little")

    def intercepts(self) -> Callable[[str], bool]:
        """``is_intercepted`` over one read of the intercept vector, for VMRUN's many tests."""
        vector, index = self.intercept_vector(), _INTERCEPT_INDEX
        return lambda name: bool(vector >> index[name] & 1)

    def is_intercepted(self, name: str) -> bool:
        i = INTERCEPT[name]
        return bool(int.from_bytes(self.mem.read(self.pa + i.offset, 4), "little") >> i.bit & 1)

    def set_intercept(self, name: str, on: bool = True) -> None:
        i = INTERCEPT[name]
        word = int.from_bytes(self.mem.read(self.pa + i.offset, 4), "little")
        word = word | 1 << i.bit if on else word & ~(1 << i.bit)
        self.mem.write(self.pa + i.offset, word.to_bytes(4, "little"))

    # events
    @property
    def eventinj(self) -> Event:
        return Event.decode(self.read("EVENTINJ"))

    @eventinj.setter
    def eventinj(self, event: Event) -> None:
        self.write("EVENTINJ", event.encode())

    @property
    def exitintinfo(self) -> Event:
        return Event.decode(self.read("EXITINTINFO"))

    # the #VMEXIT record
    def write_exit(self, exitcode: int, exitinfo1: int = 0, exitinfo2: int = 0,
                   nrip: int | None = None, exitintinfo: int = 0) -> None:
        """Record a #VMEXIT (15.6): EXITCODE..EXITINTINFO in one write, then nRIP if given."""
        self.mem.write(self.pa + 0x070, _EXIT_RECORD.pack(exitcode & _M64, exitinfo1 & _M64,
                                                          exitinfo2 & _M64, exitintinfo & _M64))
        if nrip is not None:
            self.mem.write(self.pa + 0x0C8, _U64.pack(nrip & _M64))

    def exit_writer(self) -> Callable[[int, int, int, int, int], None]:
        """A fast ``write(exitcode, exitinfo1, exitinfo2, nrip, exitintinfo=0)`` bound to this VMCB's
        bytes: two ``struct.pack_into`` calls, the bounds checked once here. Values must already
        be unsigned 64-bit (pass VMEXIT_INVALID, not -1)."""
        view, base = direct_view(self.mem, self.pa, VMCB_SIZE)
        if view is None:
            return lambda code, i1, i2, nrip, iii=0: self.write_exit(code, i1, i2, nrip, iii)
        pack4, pack1 = _EXIT_RECORD.pack_into, _U64.pack_into
        at_exit, at_nrip = base + 0x070, base + 0x0C8

        def write(exitcode: int, exitinfo1: int, exitinfo2: int, nrip: int, exitintinfo: int = 0) -> None:
            pack4(view, at_exit, exitcode, exitinfo1, exitinfo2, exitintinfo)
            pack1(view, at_nrip, nrip)

        return write


def _segment_names(seg: str) -> tuple[str | None, str | None, str, str]:
    names = tuple(f"{seg}_{p}" if f"{seg}_{p}" in FIELD else None for p in ("SELECTOR", "ATTRIB", "LIMIT", "BASE"))
    _SEGMENT_NAMES[seg] = names  # type: ignore[assignment]
    return names  # type: ignore[return-value]


_SEGMENT_NAMES: dict[str, tuple[str | None, str | None, str, str]] = {}


# -- the processor's VMCB cache (15.15.3) ----------------------------------------------------------
_ALWAYS_LOADED = tuple(f for f in FIELDS if f.clean is None)
_BY_CLEAN = {bit: tuple(f for f in FIELDS if f.clean == bit) for bit in Clean}


_UNIT_FORMAT = {1: "B", 2: "H", 4: "I", 8: "Q"}


class _Decoder:
    """Decodes a set of fields from a VMCB page with one ``struct.unpack_from`` over the units
    they live in (VMRUN loads ~120 fields at every entry; field by field costs ~1 us each)."""

    def __init__(self, fields: tuple[Field, ...]) -> None:
        self.raw = tuple(f for f in fields if f.width not in _UNIT_FORMAT)  # GUEST_INSN_BYTES
        units = sorted({(f.offset, f.width) for f in fields if f.width in _UNIT_FORMAT},
                       key=lambda u: (u[0], -u[1]))
        fmt, pos, where = "<", 0, {}  # where: unit -> (index of the unpacked unit, bit shift in it)
        start = count = 0
        for offset, width in units:
            if offset < pos:  # inside the unit before (V_INTR_VECTOR, byte 4 of the 0x060 unit)
                if offset + width > pos:
                    raise ValueError(f"VMCB units overlap at {offset:#x}")  # Table B-1 has none
                where[(offset, width)] = (count - 1, 8 * (offset - start))
                continue
            fmt += (f"{offset - pos}x" if offset > pos else "") + _UNIT_FORMAT[width]
            where[(offset, width)] = (count, 0)
            start, pos, count = offset, offset + width, count + 1
        self.unpack = struct.Struct(fmt).unpack_from
        self.plan = tuple((f.name, where[(f.offset, f.width)][0], where[(f.offset, f.width)][1] + f.lsb, f.mask)
                          for f in fields if f.width in _UNIT_FORMAT)

    def __call__(self, page: bytes) -> dict[str, int | bytes]:
        units = self.unpack(page)
        out = {name: units[i] >> lsb & mask for name, i, lsb, mask in self.plan}
        for f in self.raw:
            out[f.name] = field_value(page, f)
        return out


def _decode_all(page: bytes, fields: tuple[Field, ...]) -> dict[str, int | bytes]:
    decoder = _DECODERS.get(id(fields))  # by identity: hashing ~120 dataclasses costs more than decoding
    if decoder is None or decoder[0] is not fields:
        decoder = _DECODERS[id(fields)] = (fields, _Decoder(fields))
    return decoder[1](page)


_DECODERS: dict[int, tuple[tuple[Field, ...], _Decoder]] = {}


class VmcbCache:
    """What a logical processor keeps of the last VMCB it ran, and how VMCB clean bits use it.

    APM 15.15.3: on VMRUN the processor may take any field whose clean bit is 1 from its cached
    copy instead of from memory, provided this is the same VMCB (same physical address) it last
    ran; fields with no clean bit (RIP, RSP, RAX, RFLAGS, EVENTINJ, TLB_CONTROL, ...) are always
    loaded. So a VMM that writes a field must clear that field's clean bit before the next VMRUN,
    or the guest may run with the old value. This model always uses the cache when it may, which
    is the behaviour a VMM must be written for.
    """

    def __init__(self) -> None:
        self.pa: int | None = None
        self.groups: dict[int, dict[str, int | bytes]] = {}  # by clean bit: the cached fields

    def vmrun(self, vmcb: Vmcb) -> dict[str, int | bytes]:
        """The state VMRUN loads: every field, cached ones served from the cache when clean."""
        page = vmcb.page()
        clean = field_value(page, FIELD["VMCB_CLEAN"]) if self.pa == vmcb.pa and self.groups else 0
        state = _decode_all(page, _ALWAYS_LOADED)
        for bit, fields in _BY_CLEAN.items():
            if not clean >> bit & 1:
                self.groups[bit] = _decode_all(page, fields)
            state.update(self.groups[bit])
        self.pa = vmcb.pa
        return state

    def vmexit(self, vmcb: Vmcb) -> None:
        """After #VMEXIT wrote the guest state into ``vmcb``: the cache holds what was written."""
        if self.pa != vmcb.pa:
            return
        page = vmcb.page()
        for group in self.groups.values():
            for name in WRITTEN_AT_VMEXIT.intersection(group):
                group[name] = field_value(page, FIELD[name])

    def flush(self) -> None:
        """Forget everything (another VMCB, another CPU, or a VMM that cleared all clean bits)."""
        self.pa = None
        self.groups = {}
