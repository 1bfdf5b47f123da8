"""Files in and out, shared by every layer: safetensors streaming (`safetensors`), videos and
images (`video`), JSON reading (`json_files`), output-path checks and atomic publishing
(`output_paths`), and the one-line form of third-party errors (`error_text`).

Imports nothing of the project above it (the layering test enforces it).
"""
