"""QEMU's firmware configuration device, port I/O interface (docs/specs/fw_cfg.rst).

The platform claims two ports, 0x510 and 0x511, which QEMU decodes as one region
(``fw_cfg_comb_mem_ops`` in hw/nvram/fw_cfg.c) by access size, not by port:

* a 16-bit write at offset 0 selects an item (little-endian key) and resets the data offset;
* an 8-bit read at either port returns the item's next byte, 0 once past its end;
* an 8-bit write is a data write, ignored since QEMU 2.4; anything else is refused
  (reads 0, writes dropped).

Keys: bit 15 picks the architecture-specific table (empty here), bit 14 (the old write
channel) is ignored. Items: FW_CFG_SIGNATURE "QEMU", FW_CFG_ID 1 (traditional interface, no
DMA), FW_CFG_RAM_SIZE (u64), FW_CFG_NB_CPUS and FW_CFG_MAX_CPUS (u16), all little-endian,
and FW_CFG_FILE_DIR, the big-endian directory of the files given to :meth:`FwCfg.add_file`.
"""

from __future__ import annotations

import struct

FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NB_CPUS = 0x05
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_FILE_SLOTS = 0x20  # QEMU's default x-file-slots
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_ENTRY_MASK = 0x3FFF

FW_CFG_VERSION = 0x01  # FW_CFG_ID bit 0: traditional interface; bit 1 (DMA) stays clear
FW_CFG_MAX_FILE_PATH = 56  # name field of a directory entry, NUL included

SELECTOR = 0  # port 0x510
DATA = 1  # port 0x511


class FwCfg:
    def __init__(self, ram_size: int = 0, nb_cpus: int = 1, max_cpus: int | None = None) -> None:
        # x86 QEMU puts apic_id_limit in MAX_CPUS; with APIC IDs 0..n-1 that is n.
        self.items: dict[int, bytes] = {
            FW_CFG_SIGNATURE: b"QEMU",
            FW_CFG_ID: struct.pack("<I", FW_CFG_VERSION),
            FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
            FW_CFG_NB_CPUS: struct.pack("<H", nb_cpus),
            FW_CFG_MAX_CPUS: struct.pack("<H", nb_cpus if max_cpus is None else max_cpus),
        }
        self.files: list[tuple[str, bytes]] = []
        self._build_dir()
        self.key = FW_CFG_SIGNATURE  # QEMU's reset selects the signature
        self.offset = 0

    def add_file(self, name: str, data: bytes) -> int:
        """Add a named item and return its key. As QEMU does for current machine types, the
        directory is kept sorted by name, so a later file can move earlier files' keys: a guest
        finds files through FW_CFG_FILE_DIR, never by a fixed key."""
        encoded = name.encode("ascii")
        if not encoded or len(encoded) >= FW_CFG_MAX_FILE_PATH or b"\0" in encoded:
            raise ValueError(f"fw_cfg file name {name!r} must be 1-55 ASCII characters")
        if any(n == name for n, _ in self.files):
            raise ValueError(f"duplicate fw_cfg file name: {name}")
        if len(self.files) >= FW_CFG_FILE_SLOTS:
            raise ValueError(f"fw_cfg holds at most {FW_CFG_FILE_SLOTS} files")
        self.files.append((name, bytes(data)))
        self.files.sort(key=lambda f: f[0].encode("ascii"))  # strcmp order
        self._build_dir()
        return self.key_of(name)

    def key_of(self, name: str) -> int:
        return FW_CFG_FILE_FIRST + [n for n, _ in self.files].index(name)

    def _build_dir(self) -> None:
        for key in [k for k in self.items if k >= FW_CFG_FILE_FIRST]:
            del self.items[key]
        entries = [struct.pack(">I", len(self.files))]
        for i, (name, data) in enumerate(self.files):
            key = FW_CFG_FILE_FIRST + i
            self.items[key] = data
            # FWCfgFile: be32 size, be16 select, u16 reserved, char name[56]
            entries.append(struct.pack(">IHH56s", len(data), key, 0, name.encode("ascii")))
        self.items[FW_CFG_FILE_DIR] = b"".join(entries)

    def select(self, key: int) -> None:
        self.key = key & 0xFFFF
        self.offset = 0

    def _item(self) -> bytes:
        if self.key & FW_CFG_ARCH_LOCAL:
            return b""  # no architecture-specific items
        return self.items.get(self.key & FW_CFG_ENTRY_MASK, b"")

    def read(self, offset: int, size: int) -> int:
        if size != 1 or offset not in (SELECTOR, DATA):
            return 0
        item = self._item()
        if self.offset >= len(item):
            return 0
        self.offset += 1
        return item[self.offset - 1]

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 2 and offset == SELECTOR:
            self.select(value)
        # 8-bit writes are data writes, which QEMU ignores since 2.4.
