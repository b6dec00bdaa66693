"""``hvsim spec --arch intel_vtx vmcs|controls|errors|msrs``: the plugin's own tables."""

from __future__ import annotations

import json

import pytest
from hvsim.core.cli import main
from hvsim.plugins.intel_vtx import spec
from hvsim.plugins.intel_vtx.vmcs import COMPONENTS


def test_tables_is_a_dict_keeping_the_earlier_tables():
    tables = spec.tables()
    assert isinstance(tables, dict)
    assert {"vmcs", "controls", "errors", "msrs", "exit-reasons", "io-qualification"} <= set(tables)


def test_the_vmcs_table_lists_every_encoding_full_and_high():
    assert len(spec.tables()["vmcs"].rows) == len(COMPONENTS)


@pytest.mark.parametrize("table,row", [
    ("vmcs", {"encoding": "0x681e", "name": "GUEST_RIP", "width": "natural-width", "type": "guest state",
              "exists with": "-", "hvsim": "yes"}),
    ("errors", {"number": 12, "description": "VMREAD/VMWRITE from/to unsupported VMCS component"}),
    ("controls", {"control field": "primary processor-based VM-execution controls", "bit": 7,
                  "name": "CPU_BASED_HLT_EXITING", "SDM name": "HLT exiting", "hvsim": "0 or 1"}),
    ("controls", {"control field": "secondary processor-based VM-execution controls", "bit": 14,
                  "name": "SECONDARY_EXEC_SHADOW_VMCS", "SDM name": "VMCS shadowing", "hvsim": "must be 0"}),
    ("controls", {"control field": "VM-entry controls", "bit": 2, "name": "VM_ENTRY_LOAD_DEBUG_CONTROLS",
                  "SDM name": "Load debug controls", "hvsim": "0 or 1"}),
])
def test_spec_json_shows_the_rows(capsys, table, row):
    assert main(["spec", table, "--arch", "intel_vtx", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert row in rows


def test_the_msrs_table_decodes_each_value(capsys):
    assert main(["spec", "msrs", "--arch", "intel_vtx", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["IA32_VMX_BASIC"]["msr"] == "0x480" and "TRUE controls MSRs 1" in rows["IA32_VMX_BASIC"]["meaning"]
    assert "CR3-target values 4" in rows["IA32_VMX_MISC"]["meaning"]
