"""sas-ray: open-vocabulary 3D scene segmentation (SAS on OpenScene) as a library; Ray lives in actors/ and jobs/.

Importing `sas_ray` is cheap (no torch): `sas_ray.models` applies the CPU torchvision shim before any model
library loads."""

__version__ = "0.1.0"
