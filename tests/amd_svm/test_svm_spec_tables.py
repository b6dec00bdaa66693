"""`hvsim spec --arch amd_svm` shows the VMCB, the intercepts and the VMRUN checks from the
plugin's own tables."""

from hvsim.plugins.amd_svm import spec
from hvsim.plugins.amd_svm.vmcb import FIELDS, INTERCEPTS


def test_spec_tables_keep_the_old_ones_and_add_vmcb_intercepts_and_vmrun_checks():
    tables = spec.tables()
    assert {"exit-codes", "ioio-exitinfo1", "npf-exitinfo1", "vmcb", "intercepts", "vmrun-checks"} <= set(tables)
    assert len(tables["vmcb"].rows) == len(FIELDS)
    assert len(tables["intercepts"].rows) == len(INTERCEPTS)


def test_spec_vmcb_table_rows_name_offset_width_and_area():
    rows = {r["name"]: r for r in spec.tables()["vmcb"].as_json()["rows"]}
    assert rows["EXITCODE"] == {"offset": "0x070", "bits": "63:0", "width": 8, "name": "EXITCODE",
                                "area": "control", "clean_bit": "", "linux": "exit_code"}
    assert rows["CR3"]["offset"] == "0x550" and rows["CR3"]["clean_bit"] == "5 (CRX)"


def test_spec_intercepts_table_gives_each_bit_its_exit_code():
    rows = {r["name"]: r for r in spec.tables()["intercepts"].as_json()["rows"]}
    assert rows["CPUID"] == {"offset": "0x00c", "bit": 18, "name": "CPUID", "exit_code": "0x72",
                             "exit_name": "VMEXIT_CPUID", "hvsim": "honoured"}


def test_spec_vmcb_table_names_the_interrupt_and_avic_fields_at_their_offsets():
    rows = spec.tables()["vmcb"].as_json()["rows"]
    units = {r["linux"]: r["offset"] for r in rows if r["linux"]}
    assert units["int_ctl"] == "0x060" and units["int_vector"] == "0x064" and units["int_state"] == "0x068"
    assert units["exit_int_info"] == "0x088" and units["event_inj"] == "0x0a8"
    assert units["avic_vapic_bar"] == "0x098" and units["avic_backing_page"] == "0x0e0"
    assert units["avic_logical_id"] == "0x0f0" and units["avic_physical_id"] == "0x0f8"
    by_name = {r["name"]: r for r in rows}
    assert by_name["AVIC_ENABLE"]["bits"] == "31" and by_name["AVIC_ENABLE"]["linux"] == "int_ctl"
    assert by_name["V_INTR_VECTOR"]["offset"] == "0x064"
