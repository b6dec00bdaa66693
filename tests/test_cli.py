"""The command line: statuses, tables, and one clear line (status 2) for every kind of bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from guestlib import ARM_ENTRY, ARM_SYSTEM_OFF, arm64_image, x86_64
from hvsim.core.cli import main
from hvsim.core.guests.build import elf32

HELLO_X86 = x86_64("mov dx, 0x3f8\nmov al, 0x68\nout dx, al\nmov al, 0x69\nout dx, al\nmov al, 2\nout 0xf4, al\nhlt")


@pytest.fixture
def hello(tmp_path):
    path = tmp_path / "hello.bin"
    path.write_bytes(HELLO_X86)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("hvsim: ") and "Traceback" not in err[0]
    return err[0]


def test_run_prints_guest_serial_output_and_exits_with_the_guests_status(hello, capsysbinary):
    assert main(["run", str(hello), "--arch", "intel_vtx"]) == 5  # isa-debug-exit (2 << 1) | 1
    assert capsysbinary.readouterr().out == b"hi"


def test_stats_json_has_the_documented_shape(hello, tmp_path):
    out = tmp_path / "stats.json"
    assert main(["run", str(hello), "--arch", "amd_svm", "--stats-json", str(out)]) == 5
    doc = json.loads(out.read_text())
    assert doc["arch"] == "amd_svm"
    assert doc["exits"] == {"total": 3, "by_reason": {"VMEXIT_IOIO": 3}}
    assert doc["wall_seconds"] > 0


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm"])
def test_stats_show_what_shadow_paging_costs_over_nested_paging_for_the_same_guest(hello, tmp_path, capsys, arch):
    """--stats / --stats-json with --paging shadow|nested: the same guest, the exits and the
    MMU counters side by side (shadow: #PF exits feeding the VMM's tables)."""
    docs = {}
    for paging in ("nested", "shadow"):
        out = tmp_path / f"{paging}.json"
        assert main(["run", str(hello), "--arch", arch, "--paging", paging, "--stats", "--stats-json", str(out)]) == 5
        docs[paging] = json.loads(out.read_text())
    nested, shadow = docs["nested"], docs["shadow"]
    assert nested["paging"]["paging"] == "nested" and "shadow #PF exits" not in nested["paging"]
    pf = "EXIT_REASON_EXCEPTION_NMI" if arch == "intel_vtx" else "VMEXIT_EXCP14"
    assert pf not in nested["exits"]["by_reason"]
    assert shadow["paging"]["shadow #PF exits"] == shadow["exits"]["by_reason"][pf] > 0
    assert shadow["paging"]["shadow entries filled"] > 0
    err = capsys.readouterr().err
    assert "MMU, shadow paging" in err and "page-table writes caught" in err


def test_stats_prints_a_perf_kvm_stat_table_on_stderr(hello, capsys):
    main(["run", str(hello), "--stats", "--arch", "intel_vtx"])
    err = capsys.readouterr().err
    assert "VM-EXIT" in err and "Samples" in err and "EXIT_REASON_IO_INSTRUCTION" in err


PROBE_HOLE = x86_64("mov rax, 0xfed00030\nmov ebx, [rax]\nmov dword ptr [rax], 1\nmov ecx, [rax]\n"
                    "mov dx, 0x3f8\nmov al, bl\nout dx, al\nmov al, 0\nout 0xf4, al\nhlt")


def test_stats_list_unassigned_accesses_by_address(tmp_path, capsysbinary):
    """The guest reads a register of the HPET page (0xFED0_0000), which nothing models:
    all-ones (its low byte goes to the UART), the run goes on, and --stats / --stats-json count it."""
    image = tmp_path / "hole.bin"
    image.write_bytes(PROBE_HOLE)
    out = tmp_path / "stats.json"
    assert main(["run", str(image), "--arch", "intel_vtx", "--stats", "--stats-json", str(out)]) == 1
    captured = capsysbinary.readouterr()
    assert captured.out == b"\xff"
    err = captured.err.decode()
    assert "unassigned accesses" in err and "0xfed00030" in err
    assert json.loads(out.read_text())["unassigned"] == {"0xfed00030": {"reads": 2, "writes": 1}}


def test_strict_mmio_ends_the_run_at_an_unassigned_access(tmp_path, capsys):
    image = tmp_path / "hole.bin"
    image.write_bytes(PROBE_HOLE)
    assert main(["run", str(image), "--arch", "amd_svm", "--strict-mmio"]) == 4
    assert "guest-physical 0xfed00030, which no RAM or device backs" in one_error_line(capsys)


@pytest.mark.parametrize("args,needle", [
    (["run", "/nonexistent/image.bin"], "cannot read image"),
    (["run", "{hello}", "--arch", "riscv_h"], "unknown architecture 'riscv_h'"),
    (["run", "{hello}", "--mem", "12Q"], "bad size '12Q'"),
    (["run", "{hello}", "--initrd", "/nonexistent/initrd"], "cannot read initrd"),
    (["run", "{hello}", "--load-addr", "zero"], "bad --load-addr"),
    (["run", "{hello}", "--bogus"], "No such option"),
    (["run", "{hello}", "--vcpus", "0"], "vcpus must be between"),
    (["run", "{hello}", "--timeout", "-1"], "bad --timeout"),
    (["spec", "--arch", "nope"], "unknown architecture"),
])
def test_bad_input_is_one_line_and_status_2(hello, capsys, args, needle):
    argv = [a.replace("{hello}", str(hello)) for a in args]
    assert main(argv) == 2
    assert needle in one_error_line(capsys)


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm", "arm_el2"])
@pytest.mark.parametrize("append, needle", [
    ("caf\udce9", "is not valid UTF-8 (bytes e9 at offset 3)"),  # argv byte 0xE9 alone, as Python decodes it
    ("a\0b", "contains a NUL character"),
    ("x" * 100_000, "bytes; "),  # x86: more than the Multiboot boot area holds; arm64: Linux's 2048
])
def test_a_command_line_the_boot_protocols_cannot_carry_is_refused(tmp_path, capsysbinary, arch, append, needle):
    """The command line is UTF-8 text without NUL, at most what the boot path carries."""
    image = tmp_path / "kernel"
    if arch == "arm_el2":
        image.write_bytes(arm64_image(ARM_SYSTEM_OFF))
    else:  # a Multiboot kernel, which gets a command line
        header = struct.pack("<III", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFF_FFFF)
        image.write_bytes(elf32(header + b"\xf4", 0x10_0000, 13, 0x10_000C))
    assert main(["run", str(image), "--arch", arch, "--append", append]) == 2
    captured = capsysbinary.readouterr()
    err = captured.err.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hvsim: ") and needle in err[0]
    assert captured.out == b""  # refused before anything ran


@pytest.mark.parametrize("option", ["image", "--initrd"])
def test_a_device_is_refused_before_anything_is_read(hello, capsys, option):
    """/dev/zero never ends: it is not a regular file, so it is refused without reading."""
    args = ["run", "/dev/zero"] if option == "image" else ["run", str(hello), "--initrd", "/dev/zero"]
    assert main(args) == 2
    assert "/dev/zero: it is not a regular file" in one_error_line(capsys)


def test_an_unwritable_stats_json_is_refused_before_the_guest_runs(hello, tmp_path, capsysbinary):
    assert main(["run", str(hello), "--stats-json", str(tmp_path / "missing" / "stats.json")]) == 2
    captured = capsysbinary.readouterr()
    assert captured.out == b""  # the guest, which prints "hi", never ran
    assert captured.err.decode().startswith("hvsim: cannot write --stats-json") and captured.err.count(b"\n") == 1


def test_a_bad_translate_vcpu_is_refused_before_the_guest_runs(tmp_path, capsysbinary):
    image = tmp_path / "spin.bin"
    image.write_bytes(x86_64("mov dx, 0x3f8\nmov al, 0x21\nout dx, al\nspin:\njmp spin"))
    assert main(["translate", str(image), "0x100000", "--vcpu", "2", "--vcpus", "2", "--timeout", "30"]) == 2
    captured = capsysbinary.readouterr()
    assert captured.out == b"" and captured.err == b"hvsim: bad --vcpu 2: the VM has 2 (vCPUs 0-1)\n"


def test_translate_json_keeps_the_guests_serial_output_off_stdout(hello, capsysbinary):
    """stdout is the JSON document alone; the guest's "hi" goes to stderr."""
    assert main(["translate", str(hello), "0x100000", "--arch", "amd_svm", "--json"]) == 0
    captured = capsysbinary.readouterr()
    doc = json.loads(captured.out)
    assert doc["gpa"] == 0x100000 and doc["fault"] is None
    assert captured.err == b"hi"


def test_truncated_elf_is_refused(tmp_path, capsys):
    image = tmp_path / "cut.elf"
    image.write_bytes(elf32(b"\x90" * 64, 0x10_0000, 64, 0x10_0000)[:0x1010])
    assert main(["run", str(image)]) == 2
    assert "truncated" in one_error_line(capsys)


def test_empty_image_is_refused(tmp_path, capsys):
    image = tmp_path / "empty.bin"
    image.write_bytes(b"")
    assert main(["run", str(image)]) == 2
    assert "empty" in one_error_line(capsys)


def test_wrong_architecture_image_is_refused(tmp_path, capsys):
    image = tmp_path / "arm.img"
    image.write_bytes(arm64_image("wfi"))
    arm_image = bytearray(image.read_bytes())
    arm_image[0x38:0x3C] = b"ARM\x64"
    image.write_bytes(bytes(arm_image))
    assert main(["run", str(image), "--arch", "intel_vtx"]) == 2
    assert "arm64" in one_error_line(capsys)


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm"])
def test_the_bundled_arm64_image_is_refused_on_x86_with_a_wrong_architecture_line(capsys, arch):
    """Its header carries the booting.rst magic at 0x38, so it is an arm64 Image, not a raw
    image an x86 vCPU would execute until it halts forever."""
    from hvsim.core.guests import build

    image = build.HERE / "demo_arm64.img"
    assert image.read_bytes()[0x38:0x3C] == b"ARM\x64"
    assert main(["run", str(image), "--arch", arch]) == 2
    line = one_error_line(capsys)
    assert "is an arm64 Linux Image" in line and f"--arch {arch} runs x86 guests" in line


def test_a_runaway_guest_stops_at_the_timeout_with_its_own_status(tmp_path, capsys):
    image = tmp_path / "spin.bin"
    image.write_bytes(x86_64("spin:\njmp spin"))
    assert main(["run", str(image), "--timeout", "0.3"]) == 124
    assert "timeout" in one_error_line(capsys)


def test_a_guest_crash_has_its_own_status_and_one_line(tmp_path, capsys):
    image = tmp_path / "crash.bin"
    image.write_bytes(x86_64("xor ecx, ecx\ndiv ecx"))  # no IDT: triple fault
    assert main(["run", str(image)]) == 4
    assert "triple fault" in one_error_line(capsys)


def test_arm64_system_off_is_status_0(tmp_path):
    image = tmp_path / "off.bin"
    image.write_bytes(arm64_image(ARM_SYSTEM_OFF))
    assert main(["run", str(image), "--arch", "arm_el2", "--entry", hex(ARM_ENTRY)]) == 0


def test_archs_and_plugins_list_what_is_installed(capsys):
    assert main(["archs"]) == 0
    out = capsys.readouterr().out
    assert "intel_vtx" in out and "amd_svm" in out and "arm_el2" in out
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "hvsim.plugins.devices" in out


def test_hvsim_run_starts_and_finishes_a_hello_guest_as_a_new_process(hello):
    proc = subprocess.run([sys.executable, "-m", "hvsim.core.cli", "run", str(hello)], capture_output=True,
                          timeout=30)
    assert proc.returncode == 5 and proc.stdout == b"hi" and proc.stderr == b""


def test_log_json_writes_json_lines_to_stderr(hello):
    proc = subprocess.run([sys.executable, "-m", "hvsim.core.cli", "run", str(hello), "--log-json",
                           "--log-level", "debug"], capture_output=True, timeout=30)
    lines = [json.loads(line) for line in proc.stderr.decode().splitlines()]
    assert any(entry["event"] == "run ended" for entry in lines)
    assert proc.stdout == b"hi"


@pytest.mark.parametrize("arch,table,row", [
    ("intel_vtx", "exit-reasons", {"reason": 30, "name": "EXIT_REASON_IO_INSTRUCTION"}),
    ("intel_vtx", "exit-reasons", {"reason": 48, "name": "EXIT_REASON_EPT_VIOLATION"}),
    ("amd_svm", "exit-codes", {"code": 0x7B, "name": "VMEXIT_IOIO"}),
    ("amd_svm", "exit-codes", {"code": 0x400, "name": "VMEXIT_NPF"}),
])
def test_spec_json_comes_from_the_plugins_own_tables(capsys, arch, table, row):
    assert main(["spec", table, "--arch", arch, "--json"]) == 0
    assert row in json.loads(capsys.readouterr().out)["rows"]


def test_spec_unknown_table_is_one_line(capsys):
    assert main(["spec", "no-such-table", "--arch", "intel_vtx"]) == 2
    assert "has no table" in one_error_line(capsys)
