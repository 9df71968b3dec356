"""The embedded default end to end: the edit benchmark runs on a small subset through ComfyUI's executor."""
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "workflows"))


def test_edit_benchmark_runs_on_a_subset(comfy, tmp_path):
    import edit_benchmark
    out = tmp_path / "bench.json"
    results = edit_benchmark.run(["unet"], ["target_prompt", "uam_blend"], 1, 3, out)
    assert out.exists()
    rows = results["unet"]["target_prompt"]["cases"]
    assert len(rows) == 1 and rows[0]["case"] == "colour_red_to_yellow"
    for row in rows + results["unet"]["uam_blend"]["cases"]:
        assert 0 < row["bg_psnr"] < 100 and -1 <= row["bg_ssim"] <= 1 and row["success"] in (0.0, 1.0)
    assert math.isfinite(rows[0]["recon_psnr"])
    assert "target_prompt" in edit_benchmark.table(results)


def test_edit_benchmark_kinds_filter(comfy, tmp_path):
    import edit_benchmark
    import pytest
    results = edit_benchmark.run(["flux"], ["v_injection_kvmix_steps"], 1, 2, tmp_path / "b.json", per_kind=1,
                                 kinds=["shape"])
    rows = results["flux"]["v_injection_kvmix_steps"]["cases"]
    assert [r["kind"] for r in rows] == ["shape"]
    with pytest.raises(ValueError, match="no benchmark case"):
        edit_benchmark.run(["flux"], ["target_prompt"], 0, 2, tmp_path / "c.json", per_kind=0, kinds=["nothing"])


def test_edit_cases_have_consistent_masks():
    sys.path.insert(0, str(ROOT))
    from embedded import dataset
    from embedded.edit_suite import KINDS, benchmark_cases
    cases = benchmark_cases(per_kind=3)
    assert len(cases) == 7 + 3 * len(KINDS) and len({c.name for c in cases}) == len(cases)
    assert {c.kind for c in cases} == set(KINDS)
    for case in cases:
        edit, keep = case.masks(64)
        assert edit.sum() > 20, case.name
        assert (edit * keep).max() == 0, f"{case.name}: edit and keep regions overlap"
        assert case.source_prompt.split().count(case.word) == 1, case.name
        assert case.target_word in case.target_prompt.split(), case.name
        assert case.source != case.target, case.name
        if case.kind in ("removal", "addition", "two_object"):  # the untouched object stays in the keep region
            kept = [o for o in case.source["objects"] if o in case.target["objects"]]
            assert len(kept) == 1, case.name
            _, masks = dataset.render_scene({"background": case.source["background"], "objects": kept}, 64)
            assert (masks[0] > 0.5).sum() == ((masks[0] > 0.5) * (keep > 0.5)).sum(), case.name


def test_layout_cases_are_deterministic_and_varied():
    from embedded.edit_suite import KINDS, layout_cases
    assert layout_cases(8, seed=5) == layout_cases(8, seed=5)
    assert layout_cases(8, seed=5) != layout_cases(8, seed=6)
    cases = layout_cases(6)
    assert len(cases) == 6 * len(KINDS)
    for kind in KINDS:  # every kind has two-object scenes, corner objects and the smallest and largest sizes
        of_kind = [c for c in cases if c.kind == kind]
        objects = [o for c in of_kind for o in c.source["objects"] + c.target["objects"]]
        assert any(len(c.source["objects"]) == 2 or len(c.target["objects"]) == 2 for c in of_kind), kind
        assert any(min(o["cx"], o["cy"]) - o["r"] < 0.04 and max(o["cx"], o["cy"]) + o["r"] > 0.5 for o in objects)
        radii = {round(o["r"], 3) for o in objects}
        assert len(radii) >= 2, kind


def test_every_benchmark_method_builds_a_valid_graph(comfy):
    """Each method's graph passes ComfyUI's own validation on every denoiser it supports (cheap: nothing runs)."""
    import edit_benchmark
    import edit_methods
    import execution
    from embedded.edit_suite import benchmark_cases
    case = benchmark_cases(per_kind=1)[0]
    edit_benchmark.write_case_images([case])
    for name in edit_methods.METHODS:
        for denoiser in ("unet", "flux"):
            if not edit_methods.supports(name, denoiser):
                continue
            prompt, edited, _ = edit_methods.build(name, denoiser, case, edit_benchmark.case_image_name(case), 4)
            again = edit_methods.build(name, denoiser, case, edit_benchmark.case_image_name(case), 4)[0]
            assert again == prompt, f"{name}: a second build differs (a builder mutated its settings)"
            valid = comfy._state["loop"].run_until_complete(execution.validate_prompt("x", prompt, None))
            assert valid[0], (name, denoiser, valid[1], valid[3])
            assert edited in prompt
