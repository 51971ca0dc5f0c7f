"""Versioned DXR-BMD reference tables (young-adult and age-matched values per sex).

The numbers live in a JSON data file (``data/reference_v1.json`` by default), never in
code, so a site can replace them with its own population: ``load_reference(path)``.
A table is validated when loaded; any problem raises ``ReferenceTableError`` naming the
file and the key at fault.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_NAME = "dxr-node-reference"
FORMAT_VERSION = 1
DEFAULT_REFERENCE_PATH = Path(__file__).parent / "data" / "reference_v1.json"
SEXES = ("F", "M")


class ReferenceTableError(ValueError):
    """A reference table file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class CurvePoint:
    age_years: float
    mean_g_cm2: float
    sd_g_cm2: float


@dataclass(frozen=True)
class SexReference:
    young_adult_mean_g_cm2: float
    young_adult_sd_g_cm2: float
    age_matched: tuple[CurvePoint, ...]  # ascending age, interpolated linearly

    @property
    def age_range(self) -> tuple[float, float]:
        return self.age_matched[0].age_years, self.age_matched[-1].age_years

    def at_age(self, age_years: float) -> tuple[float, float] | None:
        """Age-matched (mean, SD) in g/cm2, or None outside the table's age range."""
        low, high = self.age_range
        if not low <= age_years <= high:
            return None
        ages = [p.age_years for p in self.age_matched]
        i = min(bisect_right(ages, age_years), len(ages) - 1)
        a, b = self.age_matched[i - 1], self.age_matched[i]
        if age_years == b.age_years:
            return b.mean_g_cm2, b.sd_g_cm2
        w = (age_years - a.age_years) / (b.age_years - a.age_years)
        return (a.mean_g_cm2 + w * (b.mean_g_cm2 - a.mean_g_cm2),
                a.sd_g_cm2 + w * (b.sd_g_cm2 - a.sd_g_cm2))


@dataclass(frozen=True)
class ReferenceTable:
    name: str
    version: str
    path: str
    sexes: dict[str, SexReference]
    # Hip-fracture hazard ratio per SD of DXR-BMD, per sex; empty if the table has none.
    hip_fracture_hr_per_sd: dict[str, float] = field(default_factory=dict)
    hip_fracture_min_age_years: float | None = None
    citations: dict[str, str] = field(default_factory=dict)


def load_reference(path: str | Path | None = None) -> ReferenceTable:
    """Load and validate a reference table; None loads the packaged default."""
    source = Path(path) if path is not None else DEFAULT_REFERENCE_PATH
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReferenceTableError(f"reference table not found: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReferenceTableError(f"cannot read reference table {source}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ReferenceTableError(
            f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    return _parse(document, str(source))


def _parse(document: Any, where: str) -> ReferenceTable:
    def fail(message: str) -> ReferenceTableError:
        return ReferenceTableError(f"{where}: {message}")

    if not isinstance(document, dict):
        raise fail("top level must be a JSON object")
    if document.get("format") != FORMAT_NAME:
        raise fail(f"'format' must be {FORMAT_NAME!r}, got {document.get('format')!r}")
    if document.get("format_version") != FORMAT_VERSION:
        raise fail(f"'format_version' must be {FORMAT_VERSION}, "
                   f"got {document.get('format_version')!r}")
    for key in ("name", "version"):
        if not isinstance(document.get(key), str) or not document[key].strip():
            raise fail(f"'{key}' must be a non-empty string")

    sexes_doc = document.get("sexes")
    if not isinstance(sexes_doc, dict) or not sexes_doc:
        raise fail("'sexes' must be an object with an entry for 'F' and/or 'M'")
    sexes = {}
    for sex, entry in sexes_doc.items():
        if sex not in SEXES:
            raise fail(f"sexes: unknown sex {sex!r} (expected 'F' or 'M')")
        sexes[sex] = _parse_sex(entry, f"sexes.{sex}", fail)

    hr_doc = document.get("hip_fracture_hr_per_sd", {})
    if not isinstance(hr_doc, dict):
        raise fail("'hip_fracture_hr_per_sd' must be an object")
    hazard_ratios = {}
    for sex in SEXES:
        if sex in hr_doc:
            hr = _number(hr_doc[sex], f"hip_fracture_hr_per_sd.{sex}", fail)
            if hr <= 1:
                raise fail(f"hip_fracture_hr_per_sd.{sex} must be > 1, got {hr}")
            hazard_ratios[sex] = hr
    min_age = hr_doc.get("min_age_years")
    if min_age is not None:
        min_age = _number(min_age, "hip_fracture_hr_per_sd.min_age_years", fail)

    citations = document.get("citations", {})
    if not isinstance(citations, dict):
        raise fail("'citations' must be an object")
    return ReferenceTable(
        name=document["name"].strip(), version=document["version"].strip(), path=where,
        sexes=sexes, hip_fracture_hr_per_sd=hazard_ratios,
        hip_fracture_min_age_years=min_age,
        citations={str(k): str(v) for k, v in citations.items()},
    )


def _parse_sex(entry: Any, key: str, fail) -> SexReference:
    if not isinstance(entry, dict):
        raise fail(f"{key} must be an object")
    young = entry.get("young_adult")
    if not isinstance(young, dict):
        raise fail(f"{key}.young_adult must be an object with mean_g_cm2 and sd_g_cm2")
    mean = _positive(young.get("mean_g_cm2"), f"{key}.young_adult.mean_g_cm2", fail)
    sd = _positive(young.get("sd_g_cm2"), f"{key}.young_adult.sd_g_cm2", fail)

    rows = entry.get("age_matched")
    if not isinstance(rows, list) or len(rows) < 2:
        raise fail(f"{key}.age_matched must be a list of at least 2 points")
    points: list[CurvePoint] = []
    for i, row in enumerate(rows):
        where = f"{key}.age_matched[{i}]"
        if not isinstance(row, dict):
            raise fail(f"{where} must be an object with age_years, mean_g_cm2, sd_g_cm2")
        point = CurvePoint(
            age_years=_positive(row.get("age_years"), f"{where}.age_years", fail),
            mean_g_cm2=_positive(row.get("mean_g_cm2"), f"{where}.mean_g_cm2", fail),
            sd_g_cm2=_positive(row.get("sd_g_cm2"), f"{where}.sd_g_cm2", fail),
        )
        if points and point.age_years <= points[-1].age_years:
            raise fail(f"{where}.age_years must be greater than the previous point's "
                       f"({point.age_years} after {points[-1].age_years})")
        points.append(point)
    return SexReference(mean, sd, tuple(points))


def _number(value: Any, key: str, fail) -> float:
    # bool is an int in Python; a true/false in the table is a mistake, not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"{key} must be a number, got {value!r}")
    return float(value)


def _positive(value: Any, key: str, fail) -> float:
    number = _number(value, key, fail)
    if not 0 < number < float("inf"):
        raise fail(f"{key} must be > 0, got {value!r}")
    return number
