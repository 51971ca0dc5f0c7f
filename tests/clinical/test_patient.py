"""Age and sex from headers: calendar age, PatientAge units, exam date fallbacks."""

from __future__ import annotations

from datetime import date

import pytest
from pydicom import Dataset

from dxr_node.clinical.patient import age_on, find_age, find_exam_date, find_sex


@pytest.mark.parametrize(("birth", "day", "age"), [
    (date(1975, 3, 1), date(2025, 3, 1), 50.0),  # exactly 50 on the birthday
    (date(1980, 2, 29), date(2025, 2, 28), 45.0),  # leap-day birthday in a common year
    (date(1980, 2, 29), date(2024, 2, 29), 44.0),
    (date(2000, 1, 1), date(2000, 7, 2), 183 / 366),
])
def test_calendar_age(birth, day, age):
    assert age_on(birth, day) == pytest.approx(age)


def test_day_before_birthday_is_still_younger():
    assert age_on(date(1975, 3, 1), date(2025, 2, 28)) < 50.0


@pytest.mark.parametrize(("text", "years"), [
    ("065Y", 65.0), ("006M", 0.5), ("010W", 70 / 365.25), ("020D", 20 / 365.25)])
def test_patient_age_units(text, years):
    header = Dataset()
    header.PatientAge = text
    assert find_age(header).value == pytest.approx(years)


def test_birth_date_after_exam_is_implausible():
    header = Dataset()
    header.PatientBirthDate = "20300101"
    header.StudyDate = "20250101"
    found = find_age(header)
    assert found.value is None and "implausible" in found.reason


def test_exam_date_falls_back_to_acquisition_then_content_date():
    header = Dataset()
    with pytest.warns(UserWarning, match="VR DA"):
        header.StudyDate = "2025-01-01"  # not a DICOM DA: ignored
    header.ContentDate = "20240505"
    assert find_exam_date(header).value == date(2024, 5, 5)
    header.AcquisitionDate = "20240404"
    assert find_exam_date(header).value == date(2024, 4, 4)


def test_sex_is_normalised_and_never_guessed():
    header = Dataset()
    with pytest.warns(UserWarning, match="VR CS"):
        header.PatientSex = "f "  # malformed but seen in the wild
    assert find_sex(header).value == "F"
    assert find_sex(None).value is None
    assert find_sex(header, override="M").value == "M"
