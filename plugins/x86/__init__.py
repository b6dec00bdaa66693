"""What the two x86 vendors share and nobody else uses: the PC platform, boot protocols, the
engine set-up, IDT delivery, the paging walk and instruction decoding.

Not a plugin itself: ``hvsim.plugins.intel_vtx`` and ``hvsim.plugins.amd_svm`` build on it.
"""
