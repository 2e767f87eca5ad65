"""3D distillation (SPEC §3, §5.7–5.8): MinkUNet18A over swappable sparse-conv backends, the voxelizer and its
augmentations, the stage-1/stage-2 losses, the EMA prediction history and the training-step functions."""
