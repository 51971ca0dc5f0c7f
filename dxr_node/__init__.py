"""dxr-node: a PACS-integrated DICOM node for digital X-ray radiogrammetry."""

__version__ = "0.1.0"
ALGORITHM_NAME = "dxr-node radiogrammetry"
