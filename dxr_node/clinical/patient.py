"""Age, sex and exam date of the patient, from CLI overrides or the source DICOM header.

Each finder returns the value or None together with a reason; nothing is ever defaulted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

# Ages outside (0, 120] years are taken as data-entry errors, not as real patients.
MAX_PLAUSIBLE_AGE_YEARS = 120.0
DAYS_PER_YEAR = 365.25
_AGE_UNIT_YEARS = {"D": 1 / DAYS_PER_YEAR, "W": 7 / DAYS_PER_YEAR, "M": 1 / 12, "Y": 1.0}
_EXAM_DATE_KEYWORDS = ("StudyDate", "AcquisitionDate", "ContentDate")


@dataclass(frozen=True)
class Finding:
    """A value found for the patient, or None with the reason it is missing."""

    value: Any
    source: str | None = None  # where the value came from, e.g. "PatientAge"
    reason: str | None = None  # set when value is None


def parse_dicom_date(text: Any) -> date | None:
    """A DICOM DA value 'YYYYMMDD' as a date, None for empty or invalid text."""
    text = str(text or "").strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def find_exam_date(header: Any) -> Finding:
    """Exam date from StudyDate, else AcquisitionDate, else ContentDate."""
    if header is None:
        return Finding(None, reason="no DICOM header: exam date unknown")
    for keyword in _EXAM_DATE_KEYWORDS:
        found = parse_dicom_date(header.get(keyword))
        if found is not None:
            return Finding(found, source=keyword)
    return Finding(None, reason="no valid StudyDate, AcquisitionDate or ContentDate")


def find_age(header: Any, override_years: float | None = None) -> Finding:
    """Age in years: the override, else birth date and exam date, else PatientAge.

    The birth date is preferred because it gives a fractional age; when it gives an
    implausible age (anonymised headers often carry a dummy birth date) PatientAge is used.
    """
    if override_years is not None:
        return _checked(float(override_years), "override")
    if header is None:
        return Finding(None, reason="age unknown: no DICOM header and no age given")

    found = []
    birth = parse_dicom_date(header.get("PatientBirthDate"))
    exam = find_exam_date(header).value
    if birth is not None and exam is not None:
        found.append(_checked(age_on(birth, exam), "PatientBirthDate"))
    text = str(header.get("PatientAge") or "").strip().upper()
    if text:
        match = re.fullmatch(r"(\d{3})([DWMY])", text)
        if match is None:
            found.append(Finding(None, reason=f"age unknown: PatientAge {text!r} is not "
                                              "nnnD/W/M/Y"))
        else:
            found.append(_checked(int(match[1]) * _AGE_UNIT_YEARS[match[2]], "PatientAge"))
    if not found:
        return Finding(None, reason="age unknown: no PatientAge and no PatientBirthDate with "
                                    "an exam date in the header")
    plausible = [f for f in found if f.value is not None]
    return plausible[0] if plausible else found[0]


def age_on(birth: date, day: date) -> float:
    """Calendar age in years on ``day``: completed years plus the elapsed part of the next.

    Exact at birthdays (50.0 on the 50th birthday), unlike days / 365.25.
    """
    if day < birth:
        return (day - birth).days / DAYS_PER_YEAR  # negative: rejected as implausible
    years = day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
    last = _birthday(birth, birth.year + years)
    following = _birthday(birth, birth.year + years + 1)
    return years + (day - last).days / (following - last).days


def _birthday(birth: date, year: int) -> date:
    # A 29 February birthday falls on 28 February in common years.
    if (birth.month, birth.day) == (2, 29) and not _is_leap(year):
        return date(year, 2, 28)
    return birth.replace(year=year)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _checked(age_years: float, source: str) -> Finding:
    if not 0 < age_years <= MAX_PLAUSIBLE_AGE_YEARS:
        return Finding(None, source=source,
                       reason=f"age from {source} is implausible ({age_years:g} years; "
                              f"expected more than 0 and at most {MAX_PLAUSIBLE_AGE_YEARS:g})")
    return Finding(age_years, source=source)


def find_sex(header: Any, override: str | None = None) -> Finding:
    """Sex 'F' or 'M' from the override, else PatientSex; anything else is unknown."""
    if override is not None:
        text, source = str(override).strip().upper(), "override"
    elif header is not None:
        text, source = str(header.get("PatientSex") or "").strip().upper(), "PatientSex"
    else:
        return Finding(None, reason="sex unknown: no DICOM header and no sex given")
    if text in ("F", "M"):
        return Finding(text, source=source)
    if not text:
        return Finding(None, source=source, reason="sex unknown: PatientSex is empty")
    return Finding(None, source=source,
                   reason=f"sex {text!r} from {source} has no sex-specific reference "
                          "(only 'F' and 'M')")
