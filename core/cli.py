"""The ``hvsim`` command line (typer).

Guest serial output goes to stdout; logs, tables and error lines go to stderr. Bad input ends
with one line ``hvsim: ...`` and status 2, never a traceback. Plugins add sub-commands through
``hvsim_register_commands``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # typer >= 0.24 carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click.exceptions import UsageError

from .errors import HvsimError

app = typer.Typer(
    name="hvsim",
    help="Simulate hardware-assisted virtualization: Intel VT-x, AMD SVM and ARMv8 EL2.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _manager():
    from .plugins import default_manager

    return default_manager()


@app.command()
def archs() -> None:
    """List the installed architecture plugins and what each implements."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hvsim architectures", show_lines=True)
    table.add_column("arch", no_wrap=True)
    table.add_column("what it models")
    table.add_column("implements")
    for arch in _manager().archs:
        feats = "\n".join(f"[b]{k}[/b]: {v}" for k, v in arch.features.items())
        table.add_row(arch.name, f"{arch.title}\n{arch.manual}\nplatform: {arch.platform}", feats)
    Console().print(table)


@app.command()
def plugins() -> None:
    """List every registered plugin and the distribution it came from."""
    from rich.console import Console
    from rich.table import Table

    pm = _manager()
    table = Table(title="hvsim plugins")
    for col in ("plugin", "module", "distribution", "hooks"):
        table.add_column(col)
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda np: np[0]):
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        module = getattr(plugin, "__name__", type(plugin).__name__)
        table.add_row(name, module, pm.distribution_of(name), ", ".join(hooks))
    Console().print(table)


def _parse_int(text: Optional[str], what: str) -> Optional[int]:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise HvsimError(f"bad {what} {text!r}: use a number such as 0x100000") from None


@app.command()
def run(
    image: Annotated[Path, typer.Argument(help="Guest image: Multiboot, arm64 Image, ELF or raw")],
    arch: Annotated[str, typer.Option("--arch", help="intel_vtx, amd_svm or arm_el2")] = "intel_vtx",
    mem: Annotated[str, typer.Option("--mem", help="Guest RAM, e.g. 128M")] = "128M",
    vcpus: Annotated[int, typer.Option("--vcpus", help="Number of vCPUs")] = 1,
    append: Annotated[str, typer.Option("--append", help="Kernel command line")] = "",
    initrd: Annotated[Optional[Path], typer.Option("--initrd", help="Initial ramdisk / module 0")] = None,
    load_addr: Annotated[Optional[str], typer.Option("--load-addr", help="Raw image load address")] = None,
    entry: Annotated[Optional[str], typer.Option("--entry", help="Raw image entry point")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Stop after SECONDS (status 124)")] = None,
    stats: Annotated[bool, typer.Option("--stats", help="Print an exit table (perf kvm stat style)")] = False,
    stats_json: Annotated[Optional[Path], typer.Option("--stats-json", help="Write exit counts as JSON")] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs as JSON lines on stderr")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")] = "warning",
    paging: Annotated[str, typer.Option("--paging", help="x86: nested (EPT / NPT) or shadow")] = "nested",
    strict_mmio: Annotated[bool, typer.Option("--strict-mmio", help="End the run at an access no RAM or device "
                                              "backs (default: reads all-ones, writes ignored)")] = False,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="Virtual time from guest progress: the "
                                                "same output, exits and memory on every run")] = False,
    stdin: Annotated[bool, typer.Option("--stdin/--no-stdin", help="Send standard input to the guest's "
                                        "serial port (a terminal is put in character mode)")] = True,
    gic: Annotated[str, typer.Option("--gic", help="arm_el2: v3 (QEMU virt's GICv3, the default) or none")] = "v3",
) -> None:
    """Run a guest image on one architecture. Exit status: the guest's own (isa-debug-exit
    (v<<1)|1, PSCI SYSTEM_OFF 0), 2 bad input, 4 guest crash, 6 halted forever, 124 timeout,
    130 SIGINT."""
    from . import log
    from .vm import STATUS_INTERRUPTED, VM

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise HvsimError(f"bad --log-level {log_level!r}: use debug, info, warning or error")
    log.configure(log_level, json=log_json)
    if timeout is not None and timeout <= 0:
        raise HvsimError(f"bad --timeout {timeout}: it must be positive")
    if stats_json is not None:
        check_writable(stats_json, "--stats-json")  # before the guest runs, not after
    from .console import Console

    vm = VM(arch, mem=mem, vcpus=vcpus, append=append, initrd=initrd,
            load_addr=_parse_int(load_addr, "--load-addr"), entry=_parse_int(entry, "--entry"),
            console=Console(sys.stdout.buffer, keep=False), strict_mmio=strict_mmio, deterministic=deterministic,
            **_paging(arch, paging), **_gic(arch, gic))
    vm.load(image)
    # From here on Ctrl-C belongs to VM.run (status 130, the tables printed). Python runs a
    # signal's handler a little after the signal arrives: one still pending when the run's own
    # watch is gone would otherwise reach the default handler and end hvsim silently mid-table.
    signal.signal(signal.SIGINT, lambda _sig, _frame: None)
    restore = _console_input(vm) if stdin else None
    try:
        result = vm.run(timeout=timeout)
    finally:
        if restore is not None:
            restore()
    if stats:
        print_stats(vm, result.wall_seconds)
    if stats_json is not None:
        write_stats_json(vm, result.wall_seconds, stats_json)
    if result.status not in (0,) and not (result.status & 1):
        print(f"hvsim: {result.reason}", file=sys.stderr)
    if result.status == STATUS_INTERRUPTED:
        # Ctrl-C: leave now. Python's own shutdown (the engines, the guest's RAM) took 80-115 ms.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.status)
    raise typer.Exit(result.status)


def _console_input(vm):
    """Standard input to the guest's UART. A terminal goes to character mode without echo (the
    guest echoes; Ctrl-C still ends the run); returns what restores it."""
    if vm.console.uart is None or sys.stdin is None:
        return None
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError):
        return None
    restore = None
    if os.isatty(fd):
        import termios
        import tty
        try:
            saved = termios.tcgetattr(fd)
            tty.setcbreak(fd, termios.TCSANOW)
            restore = lambda: termios.tcsetattr(fd, termios.TCSADRAIN, saved)  # noqa: E731
        except termios.error:
            pass
    vm.console.pump(sys.stdin.buffer)
    return restore


def _gic(arch: str, gic: str) -> dict:
    """--gic: arm_el2's interrupt controller, v3 (the default) or none."""
    if gic not in ("v3", "none"):
        raise HvsimError(f"bad --gic {gic!r}: use v3 or none")
    if arch != "arm_el2":
        if gic != "v3":
            raise HvsimError(f"--gic applies to arm_el2 only, not {arch}")
        return {}
    return {"gic": gic}


def _paging(arch: str, paging: str) -> dict:
    """--paging: nested (EPT / NPT, the default) or shadow (the VMM's shadow page tables, x86)."""
    if paging not in ("nested", "shadow"):
        raise HvsimError(f"bad --paging {paging!r}: use nested or shadow")
    if paging == "nested":
        return {}
    if arch == "arm_el2":
        raise HvsimError("--paging shadow does not apply to arm_el2: an EL1 guest's stage-1 faults are taken to "
                         "its own EL1 vectors and no EL2 control traps them, so a VMM cannot fill shadow tables "
                         "on demand; stage 2 is always there instead (see docs/memory.md)")
    return {"paging": "shadow"}


def print_stats(vm, wall: float, console=None) -> None:
    """The exit table, in the columns of ``perf kvm stat report``."""
    from rich.table import Table

    console = console or _stderr_console()
    table = Table(title=f"VM exits ({vm.arch.name}), all vCPUs: {vm.stats.total} in {wall:.3f} s")
    rows = vm.stats.rows()
    width = max([len("VM-EXIT")] + [len(r[0]) for r in rows])
    table.add_column("VM-EXIT", min_width=width, no_wrap=True)
    for col in ("Samples", "Samples%", "Time%", "Total us", "Avg time"):
        table.add_column(col, justify="right")
    for reason, n, share, tshare, total_us, mean_us in rows:
        table.add_row(reason, str(n), f"{share:.2f}%", f"{tshare:.2f}%", f"{total_us:.1f}", f"{mean_us:.2f}us")
    console.print(table)
    if vm.stats.unassigned:
        unassigned = Table(title="unassigned accesses (no RAM or device: reads all-ones, writes ignored)")
        for col in ("guest-physical", "reads", "writes"):
            unassigned.add_column(col, justify="right")
        for address, (reads, writes) in sorted(vm.stats.unassigned.items()):
            unassigned.add_row(f"{address:#x}", str(reads), str(writes))
        console.print(unassigned)
    paging = paging_stats(vm)
    if paging:
        mem = Table(title=f"MMU, {paging.pop('paging')} paging")
        mem.add_column("counter", no_wrap=True)
        mem.add_column("value", justify="right")
        for name, value in paging.items():
            mem.add_row(name, f"{value:,}")
        console.print(mem)


def paging_stats(vm) -> dict:
    """What the MMUs did: engine TLB fills, the TLB model's hits and misses and, under shadow
    paging, the VMM's shadow-table counters (#PF exits, fills, page-table writes caught, roots
    kept and reused), summed over the vCPUs."""
    mmus = [m for m in (getattr(v, "mmu", None) for v in vm.vcpus) if m is not None]
    if not mmus:
        return {}
    out = {"paging": vm.config.extra.get("paging", "nested"),
           "engine TLB fills": sum(m.engine.fills for m in mmus),
           "TLB model hits": sum(m.tlb.hits for m in mmus), "TLB model misses": sum(m.tlb.misses for m in mmus)}
    shadows = [m.shadow for m in mmus if getattr(m, "shadow", None) is not None]
    for shadow in shadows:
        for name, value in shadow.stats().items():
            out[name] = out.get(name, 0) + value
    if shadows:
        out["page-table writes caught"] = shadows[0].state.pt_writes  # VM-wide, not per vCPU
    return out


def check_writable(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written (opening it for appending creates it and
    changes nothing else; the run writes it in full at the end)."""
    if path.is_dir():
        raise HvsimError(f"cannot write {option} {path}: it is a directory")
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        raise HvsimError(f"cannot write {option} {path}: {exc.strerror or exc}") from None


def write_stats_json(vm, wall: float, path: Path) -> None:
    doc = {"arch": vm.arch.name, "exits": {"total": vm.stats.total, "by_reason": vm.stats.counts()},
           "unassigned": {f"{a:#x}": {"reads": r, "writes": w} for a, (r, w) in sorted(vm.stats.unassigned.items())},
           "paging": paging_stats(vm), "wall_seconds": wall}
    try:
        path.write_text(json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        raise HvsimError(f"cannot write --stats-json {path}: {exc.strerror or exc}") from None


@app.command()
def translate(
    image: Annotated[Path, typer.Argument(help="Guest image: Multiboot, arm64 Image, ELF or raw")],
    address: Annotated[str, typer.Argument(help="Guest virtual address, e.g. 0xffff800000001000")],
    arch: Annotated[str, typer.Option("--arch", help="intel_vtx, amd_svm or arm_el2")] = "intel_vtx",
    mem: Annotated[str, typer.Option("--mem", help="Guest RAM, e.g. 128M")] = "128M",
    load_addr: Annotated[Optional[str], typer.Option("--load-addr", help="Raw image load address")] = None,
    entry: Annotated[Optional[str], typer.Option("--entry", help="Raw image entry point")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Run the guest at most SECONDS first")] = 10.0,
    vcpus: Annotated[int, typer.Option("--vcpus", help="Number of vCPUs")] = 1,
    vcpu: Annotated[int, typer.Option("--vcpu", help="Whose translation regime to use")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    paging: Annotated[str, typer.Option("--paging", help="x86: nested (EPT / NPT) or shadow")] = "nested",
    strict_mmio: Annotated[bool, typer.Option("--strict-mmio", help="End the run at an access no RAM or device "
                                              "backs")] = False,
) -> None:
    """Run a guest until it stops (its page tables are then built), then print the full walk of
    ADDRESS: every guest page-table entry read, each through stage 2 (EPT, NPT, Arm stage 2),
    the guest-physical address, its stage-2 walk and the host-physical address. The guest's
    serial output goes to stderr here, so stdout holds only the walk. Status 2 (and one line)
    when ADDRESS does not translate."""
    from .console import Console
    from .vm import VM

    va = _parse_int(address, "address")
    if timeout <= 0:
        raise HvsimError(f"bad --timeout {timeout}: it must be positive")
    vm = VM(arch, mem=mem, vcpus=vcpus, load_addr=_parse_int(load_addr, "--load-addr"),
            entry=_parse_int(entry, "--entry"), console=Console(sys.stderr.buffer, keep=False),
            strict_mmio=strict_mmio, **_paging(arch, paging))
    if not 0 <= vcpu < len(vm.vcpus):  # before the guest runs, not after
        raise HvsimError(f"bad --vcpu {vcpu}: the VM has {len(vm.vcpus)} (vCPUs 0-{len(vm.vcpus) - 1})")
    vm.load(image)
    vm.run(timeout=timeout)
    try:
        trace = vm.vcpus[vcpu].trace_translation(va)
    except NotImplementedError as exc:
        raise HvsimError(f"{arch}: {exc}") from None
    if as_json:
        print(json.dumps(trace.as_json(), indent=2))
    else:
        print_trace(trace)
    if trace.fault:
        raise HvsimError(f"GVA {va:#x} does not translate on vCPU {vcpu}: {trace.fault}")


def print_trace(trace, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False, width=132)
    names = trace.stage2_levels
    table = Table(title=f"GVA {trace.address:#x}: stage 1 (the guest's tables), stage 2 = {trace.stage2_name}")
    for col in ("stage", "entry", "at (GPA)", "value", "flags", "entry's HPA"):
        table.add_column(col)
    for t in trace.stage1:
        table.add_row("1", t.level, f"{t.gpa:#x}", f"{t.value:#018x}", t.flags,
                      f"{t.hpa:#x}" if t.hpa is not None else "-")
        for w in t.stage2:
            table.add_row("  2", f"  {names.get(w.level, w.level)}", f"  {w.address:#x} (HPA)", f"{w.value:#018x}",
                          w.flags, "")
    if trace.gpa is not None:
        table.add_row("", "GPA", f"{trace.gpa:#x}", "", "", "")
        for w in trace.stage2:
            table.add_row("2", str(names.get(w.level, w.level)), f"{w.address:#x} (HPA)", f"{w.value:#018x}", w.flags, "")
    console.print(table)
    if trace.fault:
        console.print(f"fault: {trace.fault}")
    else:
        console.print(f"GVA {trace.address:#x} -> GPA {trace.gpa:#x} -> HPA {trace.hpa:#x}")


@app.command()
def demo() -> None:
    """Run the bundled demo guest on every installed architecture."""
    from .demo import run_demo

    raise typer.Exit(run_demo(_manager()))


@app.command()
def spec(
    table: Annotated[Optional[str], typer.Argument(help="Table name; omit to list the tables")] = None,
    arch: Annotated[str, typer.Option("--arch", help="Architecture whose tables to show")] = "intel_vtx",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Show an architecture's reference tables (exit reasons, encodings) from its plugin."""
    pm = _manager()
    if pm.archs.get(arch) is None:
        raise HvsimError(f"unknown architecture {arch!r} (installed: {', '.join(pm.archs.names())})")
    tables: dict = {}
    for result in pm.hook.hvsim_spec_tables(arch=arch):
        if result:
            tables.update(result)
    if table is None:
        if as_json:
            print(json.dumps(sorted(tables)))
        else:
            for name, t in sorted(tables.items()):
                print(f"{name:20} {t.title} ({t.source})")
        return
    if table not in tables:
        raise HvsimError(f"{arch} has no table {table!r} (tables: {', '.join(sorted(tables)) or 'none'})")
    t = tables[table]
    if as_json:
        print(json.dumps(t.as_json(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"{t.title} ({t.source})")
    for col in t.columns:
        out.add_column(col)
    for row in t.rows:
        out.add_row(*(hex(c) if isinstance(c, int) and not isinstance(c, bool) and c > 9 else str(c) for c in row))
    Console().print(out)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line and status 2 for bad input, whatever raised it."""
    from .plugins import default_manager

    args = sys.argv[1:] if argv is None else argv
    try:
        default_manager().hook.hvsim_register_commands(app=app)
        command = typer.main.get_command(app)
        result = command.main(args=args, prog_name="hvsim", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 130
    except UsageError as exc:
        print(f"hvsim: {exc.format_message()}", file=sys.stderr)
        return 2
    except HvsimError as exc:
        print(f"hvsim: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
