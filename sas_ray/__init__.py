"""sas-ray: open-vocabulary 3D scene segmentation (SAS on OpenScene) as a library; Ray lives in actors/ and jobs/."""

__version__ = "0.1.0"

from sas_ray import _torchvision_shim

_torchvision_shim.apply()
