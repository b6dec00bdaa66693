"""``hvsim demo``: the bundled demo guest on every installed architecture, with its exit table."""

from __future__ import annotations

from importlib.resources import files

from rich.console import Console as RichConsole
from rich.panel import Panel

# Which bundled image each platform boots, and the status that means it ran to the end.
DEMO_IMAGES = {"pc": ("demo_x86.elf", 1), "virt": ("demo_arm64.img", 0)}


def run_demo(pm) -> int:
    from .cli import print_stats
    from .console import Console
    from .vm import VM

    out = RichConsole(highlight=False)
    failures = 0
    for arch in pm.archs:
        image_name, expected = DEMO_IMAGES.get(arch.platform, (None, None))
        image = files("hvsim.core.guests") / image_name if image_name else None
        if image is None or not image.is_file():
            out.print(f"[yellow]{arch.name}: no bundled demo guest for platform {arch.platform!r}[/]")
            continue
        vm = VM(arch.name, mem="64M", pm=pm, console=Console(), append="demo")
        vm.load(image.read_bytes())
        result = vm.run(timeout=30)
        ok = result.status == expected
        failures += not ok
        title = f"{arch.title} ({arch.name}): guest serial output"
        out.print(Panel(vm.console.text.rstrip() or "(nothing)", title=title, expand=False))
        print_stats(vm, result.wall_seconds, console=out)
        verdict = "[green]ran to the end[/]" if ok else f"[red]ended early: {result.reason}[/]"
        out.print(f"status {result.status} ({result.reason}): {verdict}\n")
    return 1 if failures else 0
