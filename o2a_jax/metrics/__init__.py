"""Evaluation metrics: `pixels` (PSNR and SSIM of uint8 frames against the ground truth)."""
