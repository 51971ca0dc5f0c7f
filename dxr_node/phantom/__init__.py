"""Synthetic PA hand radiographs with known metacarpal geometry (tests and benchmarks).

``HandAnatomy.random(rng)`` and ``Acquisition.random(rng)`` are separate seeded specs;
``render(anatomy, acquisition)`` gives stored pixels and the truth record;
``to_dataset``/``write_dataset`` make DICOM; ``write_phantom_set`` writes a folder with
``truth.json``; ``phantom_dataset`` makes one dataset in a line.
"""

from dxr_node.phantom.acquisition import Acquisition
from dxr_node.phantom.anatomy import HandAnatomy
from dxr_node.phantom.dicom import Patient, to_dataset, write_dataset
from dxr_node.phantom.generate import image_specs, phantom_dataset, write_phantom_set
from dxr_node.phantom.render import render

__all__ = ["Acquisition", "HandAnatomy", "Patient", "image_specs", "phantom_dataset",
           "render", "to_dataset", "write_dataset", "write_phantom_set"]
