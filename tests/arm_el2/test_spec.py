"""`hvsim spec --arch arm_el2 esr|hcr|psci|sysregs|traps [--json]`: the plugin's own tables."""

from __future__ import annotations

import json

import pytest
from hvsim.core.cli import main
from hvsim.plugins.arm_el2 import el2


def table(capsys, name: str) -> list[dict]:
    assert main(["spec", name, "--arch", "arm_el2", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["rows"]


def test_esr_lists_every_exception_class_hvsim_writes_with_its_iss(capsys):
    rows = {r["EC"]: r for r in table(capsys, "esr")}
    assert {0x01, 0x07, 0x16, 0x17, 0x18, 0x24} <= set(rows)
    assert rows[0x07]["name"] == "ESR_ELx_EC_FP_ASIMD" and "CPTR_EL2.TFP" in rows[0x07]["cause"]
    assert "TI [1:0]" in rows[0x01]["ISS"] and "Direction [0]" in rows[0x18]["ISS"]


def test_sysregs_lists_the_el2_registers_with_encodings_and_reserved_bits(capsys):
    rows = {r["register"]: r for r in table(capsys, "sysregs")}
    assert set(rows) == set(el2.REGISTERS)
    assert rows["HCR_EL2"]["encoding"] == "S3_4_C1_C1_0" and rows["HCR_EL2"]["reset"] == el2.HCR_EL2_DEFAULT
    assert rows["VTCR_EL2"]["RES1"] == 1 << 31 and rows["CPTR_EL2"]["RES1"] == 0x32FF
    assert rows["CNTVOFF_EL2"]["encoding"] == "S3_4_C14_C0_3"


def test_psci_marks_each_function_and_names_the_return_codes(capsys):
    rows = {r["name"]: r for r in table(capsys, "psci")}
    for name in ("PSCI_0_2_FN_CPU_SUSPEND", "PSCI_0_2_FN64_CPU_ON", "PSCI_1_1_FN64_SYSTEM_RESET2",
                 "PSCI_1_0_FN_PSCI_FEATURES"):
        assert rows[name]["implemented"] is True
    assert rows["PSCI_0_2_FN64_MIGRATE"]["implemented"] is False
    codes = {r["name"]: r["value"] for r in table(capsys, "psci-returns")}
    assert codes["PSCI_RET_ALREADY_ON"] == -4 and codes["PSCI_RET_INVALID_PARAMS"] == -2


@pytest.mark.parametrize("control, ec", [("HCR_EL2.TTLB", 0x18), ("HCR_EL2.TPCP", 0x18),
                                         ("MDCR_EL2.TDA", 0x18), ("CNTHCTL_EL2.EL1PCEN", 0x18),
                                         ("CPTR_EL2.TFP", 0x07), ("HCR_EL2.TWE", 0x01)])
def test_traps_says_what_each_control_traps(capsys, control, ec):
    rows = {r["control"]: r for r in table(capsys, "traps")}
    assert rows[control]["EC"] == ec


def test_hcr_says_what_hvsim_does_with_each_modelled_bit(capsys):
    rows = {r["field"]: r for r in table(capsys, "hcr")}
    for field in ("TWE", "TIDCP", "TSW", "TPCP", "TPU", "TTLB", "TGE"):
        assert "no effect" not in rows[field]["hvsim"], field
