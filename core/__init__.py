"""The architecture-neutral core: VM, vCPU loop, memory, exits, hook specs, CLI."""
