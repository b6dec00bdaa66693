"""`hvsim spec` lists the exits and intercepts hvsim models, from the plugins' own tables."""

from __future__ import annotations

import json

import pytest

from hvsim.core.cli import main


@pytest.mark.parametrize("reason,name,cause", [
    (29, "EXIT_REASON_DR_ACCESS", "MOV-DR exiting"), (43, "EXIT_REASON_TPR_BELOW_THRESHOLD", "use TPR shadow"),
    (46, "EXIT_REASON_GDTR_IDTR", "descriptor-table exiting"), (55, "EXIT_REASON_XSETBV", "always"),
    (57, "EXIT_REASON_RDRAND", "RDRAND exiting"), (58, "EXIT_REASON_INVPCID", "INVLPG exiting")])
def test_vmx_exit_reasons_table_says_what_makes_hvsim_exit(capsys, reason, name, cause):
    assert main(["spec", "exit-reasons", "--arch", "intel_vtx", "--json"]) == 0
    assert {"reason": reason, "name": name} in json.loads(capsys.readouterr().out)["rows"]
    assert main(["spec", "exit-causes", "--arch", "intel_vtx", "--json"]) == 0
    rows = {r["reason"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows[reason]["name"] == name and cause in rows[reason]["hvsim exits on"]


def test_vmx_qualification_and_instruction_information_tables(capsys):
    assert main(["spec", "instruction-information", "--arch", "intel_vtx", "--json"]) == 0
    rows = {r["bits"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert "instruction identity" in rows["29:28"]["meaning"] and "Reg2" in rows["31:28"]["meaning"]
    assert main(["spec", "cr-qualification", "--arch", "intel_vtx", "--json"]) == 0
    rows = {r["bits"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert "2 CLTS, 3 LMSW" in rows["5:4"]["meaning"]


@pytest.mark.parametrize("name,honoured", [("PUSHF", True), ("INTN", True), ("EFER_WRITE_TRAP", True),
                                           ("CR0_SEL_WRITE", True), ("DR7_READ", True), ("GDTR_WRITE", True),
                                           ("TASK_SWITCH", True), ("DR8_READ", False),
                                           ("CR8_WRITE", True), ("CR5_WRITE", False), ("VINTR", True),
                                           ("INIT", True), ("RSM", False)])
def test_svm_intercepts_table_marks_what_hvsim_honours(capsys, name, honoured):
    assert main(["spec", "intercepts", "--arch", "amd_svm", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert (rows[name]["hvsim"] == "honoured") is honoured
