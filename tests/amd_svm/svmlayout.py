"""Where the SVM tests put things in host memory, and the segment attributes they use."""

VMCB_PA = 0x1000
IOPM_PA = 0x4000  # 12 KiB: 0x4000-0x6FFF
MSRPM_PA = 0x8000  # 8 KiB: 0x8000-0x9FFF
CODE64 = 0x29B  # attributes of a 64-bit code segment: type 0xB, S, P, L (bit 9)
