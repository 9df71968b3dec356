"""Per-branch conditioning: distilled guidance per branch reaches its rows; options that cannot be split are refused."""
import pytest
import torch

from test_inversion import source_latent
from test_preservation import ops  # noqa: F401  (the fixture)


def with_options(cond, **options):
    return [[cond[0][0], {**cond[0][1], **options}]]


def test_each_branch_runs_at_its_own_flux_guidance(ops, fixtures):
    model = fixtures.tiny_model("flux")
    x0 = source_latent(20)
    text = fixtures.tiny_conditioning("a red circle")
    low, high = with_options(text, guidance=1.0), with_options(text, guidance=4.0)
    inv = ops.inversion.invert(model, x0, low, steps=3)
    alone = {g: ops.edit.edit(model, inv, [ops.edit.Branch("target", c, 1.0)])[0]["target"]
             for g, c in ((1.0, low), (4.0, high))}
    assert not torch.allclose(alone[1.0], alone[4.0], atol=1e-4)  # the guidance input matters on this model
    both, _ = ops.edit.edit(model, inv, [ops.edit.Branch("source", low, 1.0), ops.edit.Branch("target", high, 1.0)],
                            source_mode="reconstruct")
    torch.testing.assert_close(both["source"], alone[1.0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both["target"], alone[4.0], atol=1e-5, rtol=1e-5)
    # FlowEdit: the source branch at 1, the target at 4 (a target = source edit then moves, at equal guidance not)
    same, _ = ops.flowedit.flow_edit(model, x0, low, low, steps=4, n_max=3, source_cfg=1.0, target_cfg=1.0)
    torch.testing.assert_close(same["target"], x0, atol=1e-5, rtol=1e-5)
    moved, _ = ops.flowedit.flow_edit(model, x0, low, high, steps=4, n_max=3, source_cfg=1.0, target_cfg=1.0)
    assert (moved["target"] - x0).abs().mean() > 1e-4


def test_options_that_cannot_be_split_are_refused(ops, fixtures):
    model = fixtures.tiny_model("flux")
    x0 = source_latent(21)
    text = fixtures.tiny_conditioning("a red circle")
    inv = ops.inversion.invert(model, x0, text, steps=2)
    ref = with_options(text, reference_latents=[torch.zeros(1, 4, 16, 16)])
    with pytest.raises(ValueError, match="target conditioning: its 'reference_latents' option differs"):
        ops.edit.edit(model, inv, [ops.edit.Branch("source", text, 1.0), ops.edit.Branch("target", ref, 1.0)])
    same = ops.edit.edit(model, inv, [ops.edit.Branch("source", ref, 1.0), ops.edit.Branch("target", ref, 1.0)])
    assert same[0]["target"].shape == x0.shape  # the same option on every branch is fine
    with pytest.raises(ValueError, match="source conditioning: no guidance while another branch has one"):
        ops.edit.edit(model, inv, [ops.edit.Branch("source", text, 1.0),
                                   ops.edit.Branch("target", with_options(text, guidance=2.0), 1.0)])
