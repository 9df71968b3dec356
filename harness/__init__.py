"""Run the real ComfyUI headless for the pack's tests, benchmarks and demo (never imported by the pack itself)."""
