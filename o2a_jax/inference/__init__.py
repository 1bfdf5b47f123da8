"""Inference: preprocessing, long-video sampling, sharded sampling and the `o2a animate`,
`o2a transfer` and `o2a pose` commands.

- `prepare.prepare(image, ref_poses, driving_poses, ...)` -> `Prepared` model inputs (official
  inference preprocessing).
- `animate.generate_video(model, vae, inputs, text, negative_text, ...)` -> uint8 video of any
  length (chunk plan, TokenReplace context, stitching; `chunks.py`).
- `sharded`: context-parallel attention registration and sampling-mesh checks.
- `generation.generate(files, image, ref, driving, ...)`: one job from files (models, text,
  preprocessing, sampling) with plain option values; `pose_sources`: poses from pose files or,
  through local ONNX models, from images and videos.
- `load`: denoiser / text-embedding / pose-file loading.
- `cli.py`: `o2a animate|transfer|pose`, options mapped onto the values above (nothing else).
"""
