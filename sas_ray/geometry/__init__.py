"""Camera geometry and multi-view fusion math (SPEC §2.2–2.4): intrinsic rescale, point-to-pixel projection with
visibility, and the per-point feature accumulator. Pure torch; runs wherever its input tensors live."""
