"""Follow-up: a patient's earlier results (the pipeline's ``HistorySource``)."""

from __future__ import annotations

from dxr_node.clinical.result import PriorResult
from dxr_node.node.database import Database


class History(Database):
    def priors(
        self, patient_id: str, issuer: str | None, exclude_sop_instance_uid: str
    ) -> list[PriorResult]:
        """Earlier successful results of the same patient (same PatientID and issuer),
        oldest first; the instance being analysed is never its own prior."""
        rows = self._read(
            "SELECT sop_instance_uid, study_date, laterality, dxr_bmd_g_cm2 FROM results"
            " WHERE patient_id = ? AND issuer_of_patient_id IS NOT DISTINCT FROM ?"
            " AND status = 'ok' AND dxr_bmd_g_cm2 IS NOT NULL AND sop_instance_uid != ?"
            " ORDER BY study_date, created_at",
            (patient_id, issuer or None, exclude_sop_instance_uid),
        )
        return [
            PriorResult(r["sop_instance_uid"], r["study_date"] or "", r["laterality"],
                        r["dxr_bmd_g_cm2"])
            for r in rows
        ]
