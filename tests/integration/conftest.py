"""The integration tests reuse the node tests' peers (dcmtk, `dxr-node serve`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dxr_node.integration.hl7 import ResultContext
from dxr_node.node.integration_store import Order

_NODE_TESTS = str(Path(__file__).resolve().parents[1] / "node")
if _NODE_TESTS not in sys.path:
    sys.path.append(_NODE_TESTS)


@pytest.fixture(scope="session")
def context(tmp_path_factory) -> ResultContext:
    """A real analysis of one phantom, with a matched order (Z13.820) and its PDF."""
    from dxr_node.phantom.generate import write_phantom_set
    from dxr_node.pipeline import process_file

    out = tmp_path_factory.mktemp("fhir-phantom")
    write_phantom_set(out, n=1, seed=31)
    result = process_file(sorted(out.glob("*.dcm"))[0], kinds=("PDF",))
    header = result.radiograph.dataset
    order = Order(placer_order_number="PL9", accession_number="ACC9", patient_id="P9",
                  diagnoses=(("Z13.820", "Encounter for screening for osteoporosis", "I10"),))
    document = result.objects[0]
    pdf = bytes(document.EncapsulatedDocument)[:int(document.EncapsulatedDocumentLength)]
    return ResultContext(job_id=1, analysis=result.analysis,
                         interpretation=result.interpretation, order=order,
                         patient_id=str(header.PatientID), issuer_of_patient_id="HOSP",
                         accession_number="ACC9", study_instance_uid=str(header.StudyInstanceUID),
                         study_date=str(header.StudyDate), diagnoses=order.diagnoses, pdf=pdf)
