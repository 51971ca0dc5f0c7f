"""`dxr-node reference`: a site checks its own table before configuring it."""

from __future__ import annotations

import json

from dxr_node.cli import main
from dxr_node.clinical.reference import DEFAULT_REFERENCE_PATH


def test_packaged_table_is_reported_valid(capsys):
    assert main(["reference", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["version"] == "1.0.0"
    assert summary["sexes"]["F"]["age_range_years"] == [20.0, 100.0]


def test_broken_site_table_exits_2_with_one_clear_line(tmp_path, capsys):
    document = json.loads(DEFAULT_REFERENCE_PATH.read_text())
    document["sexes"]["M"]["young_adult"]["sd_g_cm2"] = 0
    path = tmp_path / "site.json"
    path.write_text(json.dumps(document))
    assert main(["reference", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "sexes.M.young_adult.sd_g_cm2 must be > 0" in err
