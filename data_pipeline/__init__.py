"""The Grain input pipeline for One-to-All training (masked-outpainting samples)."""
