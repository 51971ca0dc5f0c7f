"""Reference tables: the packaged default, a site's own table, and clear errors."""

from __future__ import annotations

import json

import pytest

from dxr_node.clinical import ReferenceTableError, interpret, load_reference
from dxr_node.clinical.reference import DEFAULT_REFERENCE_PATH


def site_table(**changes) -> dict:
    document = json.loads(DEFAULT_REFERENCE_PATH.read_text())
    document.update(changes)
    return document


def write(tmp_path, document) -> str:
    path = tmp_path / "site.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return str(path)


def test_default_table_is_versioned_and_cited():
    table = load_reference()
    assert table.name and table.version == "1.0.0"
    assert {"black2001", "swedish2013", "bottcher2006", "wilczek2013"} <= set(table.citations)
    document = json.loads(DEFAULT_REFERENCE_PATH.read_text())
    assert document["derivation"], "derived numbers must say how they were derived"


def test_site_table_replaces_the_default(tmp_path, analysis_factory, header_factory):
    document = site_table(name="Site X women", version="2024.1")
    document["sexes"] = {"F": {
        "young_adult": {"mean_g_cm2": 0.600, "sd_g_cm2": 0.040},
        "age_matched": [{"age_years": 20, "mean_g_cm2": 0.600, "sd_g_cm2": 0.040},
                        {"age_years": 90, "mean_g_cm2": 0.400, "sd_g_cm2": 0.040}]}}
    table = load_reference(write(tmp_path, document))
    result = interpret(analysis_factory(0.52), header_factory(age="055Y"), reference=table)
    assert (result.reference.name, result.reference.version) == ("Site X women", "2024.1")
    assert result.t_score == -2.0
    assert result.reference.age_matched_mean_g_cm2 == pytest.approx(0.500)
    assert result.z_score == 0.5

    man = interpret(analysis_factory(0.52), header_factory(sex="M", age="055Y"),
                    reference=table)
    assert man.t_score is None
    assert any("no data for sex 'M'" in r for r in man.reasons)


def test_interpolates_linearly_between_points():
    women = load_reference().sexes["F"]
    low, high = women.at_age(70), women.at_age(75)
    assert women.at_age(72.5)[0] == pytest.approx((low[0] + high[0]) / 2)
    assert women.at_age(19.9) is None and women.at_age(100.1) is None


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(format="other"), "'format' must be"),
    (lambda d: d.update(format_version=2), "'format_version' must be 1"),
    (lambda d: d.pop("name"), "'name' must be a non-empty string"),
    (lambda d: d.update(sexes={}), "'sexes' must be an object"),
    (lambda d: d["sexes"].update(X=d["sexes"]["F"]), "unknown sex 'X'"),
    (lambda d: d["sexes"]["F"]["young_adult"].update(sd_g_cm2=-0.05),
     "sexes.F.young_adult.sd_g_cm2 must be > 0"),
    (lambda d: d["sexes"]["M"]["young_adult"].update(mean_g_cm2="0.6"),
     "sexes.M.young_adult.mean_g_cm2 must be a number"),
    (lambda d: d["sexes"]["F"]["age_matched"][3].update(age_years=20),
     "sexes.F.age_matched[3].age_years must be greater"),
    (lambda d: d["sexes"]["F"]["age_matched"][1].pop("sd_g_cm2"),
     "sexes.F.age_matched[1].sd_g_cm2 must be a number"),
    (lambda d: d["sexes"]["F"].update(age_matched=[]), "at least 2 points"),
    (lambda d: d["hip_fracture_hr_per_sd"].update(F=0.8), "must be > 1"),
])
def test_malformed_tables_fail_with_a_clear_message(tmp_path, mutate, message):
    document = site_table()
    mutate(document)
    path = write(tmp_path, document)
    with pytest.raises(ReferenceTableError) as error:
        load_reference(path)
    assert message in str(error.value)
    assert path in str(error.value)


def test_unreadable_files_fail_with_a_clear_message(tmp_path):
    with pytest.raises(ReferenceTableError, match="not found"):
        load_reference(tmp_path / "missing.json")
    with pytest.raises(ReferenceTableError, match="not valid JSON"):
        load_reference(write(tmp_path, "{ not json"))
    with pytest.raises(ReferenceTableError, match="must be a JSON object"):
        load_reference(write(tmp_path, "[1, 2]"))
