"""`dxr-node reference [FILE]`: check a reference table and show what it holds."""

from __future__ import annotations

import argparse
import json
import sys

from dxr_node.clinical.reference import ReferenceTableError, load_reference


def run(args: argparse.Namespace) -> int:
    try:
        table = load_reference(args.file)
    except ReferenceTableError as exc:
        print(f"dxr-node: error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "name": table.name,
        "version": table.version,
        "path": table.path,
        "sexes": {
            sex: {
                "young_adult_mean_g_cm2": ref.young_adult_mean_g_cm2,
                "young_adult_sd_g_cm2": ref.young_adult_sd_g_cm2,
                "age_range_years": list(ref.age_range),
                "points": len(ref.age_matched),
            }
            for sex, ref in table.sexes.items()
        },
        "hip_fracture_hr_per_sd": table.hip_fracture_hr_per_sd,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{table.name} version {table.version} ({table.path}): valid")
    for sex, ref in table.sexes.items():
        low, high = ref.age_range
        hazard = table.hip_fracture_hr_per_sd.get(sex)
        print(f"  {sex}: young adult {ref.young_adult_mean_g_cm2:.4f} "
              f"(SD {ref.young_adult_sd_g_cm2:.4f}) g/cm2; age-matched {low:g}-{high:g} years "
              f"in {len(ref.age_matched)} points; hip-fracture HR/SD "
              f"{'none' if hazard is None else hazard}")
    return 0
