"""Learnable Region Mask: predictor shapes/range, padding, per-image search on a planted scorer, parser, the node
through the executor, and a tiny IoU run of benchmarks/region_mask_iou.py."""
import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def rp(pack):
    return pack("latent_ops.region_predictor")


@pytest.fixture(scope="module")
def rs(pack):
    return pack("latent_ops.region_search")


def test_predictor_shapes_range_and_padding(rp):
    torch.manual_seed(0)
    pred = rp.RegionPredictor(img_dim=24, txt_dim=16, width=32, heads=4, clip_dim=8).eval()
    img, txt = torch.randn(2, 36, 24), torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    prob, (f_img, f_edit, f_reg) = pred(img, txt, pad, return_features=True)
    assert prob.shape == (2, 36) and f_edit.shape == (2, 36, 32) and f_reg.shape == (2, 36, 32)
    assert bool(((prob > 0) & (prob < 1)).all())
    assert pred.semantic(f_edit).norm(dim=-1).sub(1).abs().max() < 1e-5
    # padded tokens are ignored: changing them does not change the map
    txt2 = txt.clone()
    txt2[0, 3:] = 100 * torch.randn(2, 16)
    assert torch.allclose(pred(img, txt2, pad)[0], prob[0], atol=1e-6)
    assert not torch.allclose(pred(img, txt2, None)[0], prob[0], atol=1e-3)
    mask, soft = rp.to_mask(prob, (60, 48), threshold=0.5)
    assert mask.shape == soft.shape == (2, 60, 48)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and soft.min() >= 0 and soft.max() <= 1
    assert torch.equal(mask, (soft > 0.5).float())
    assert rp.grid_shape(36) == (6, 6) and rp.grid_shape(256) == (16, 16)


def test_predictor_save_load_roundtrip(rp, tmp_path):
    pred = rp.RegionPredictor(img_dim=8, txt_dim=8, width=16, heads=2, clip_dim=4).eval()
    path = str(tmp_path / "rp.safetensors")
    rp.save(pred, path, {"x": 1})
    back = rp.load(path)
    x, t = torch.randn(1, 16, 8), torch.randn(1, 3, 8)
    assert back.config == pred.config
    assert torch.allclose(back(x, t), pred(x, t), atol=5e-3)  # fp16 storage


def test_parse_instruction(rs):
    p = rs.parse_instruction
    assert p("make the red circle blue") == {"op": "change", "source": "red circle", "target": "blue circle"}
    assert p("Remove the square.") == {"op": "remove", "source": "square", "target": ""}
    assert p("add a yellow triangle") == {"op": "add", "source": "", "target": "yellow triangle"}
    assert p("change the background to green")["op"] == "background"
    assert p("turn the red circle into a square") == {"op": "change", "source": "red circle",
                                                      "target": "red square"}
    assert p("change the red circle to blue")["target"] == "blue circle"
    with pytest.raises(ValueError, match="instruction"):
        p("   ")


def test_search_finds_planted_region(rs):
    """A planted scorer (fraction of the box inside a planted square, IoU-style) must pick the planted box."""
    H = W = 40
    planted = torch.zeros(H, W)
    planted[6:18, 20:32] = 1  # 12x12 at (x 20-32, y 6-18); 12 = 0.3 * 40
    feats = torch.zeros(8 * 8, 4)
    feats[:, 0] = 1
    for y in range(8):
        for x in range(8):
            if planted[y * 5 + 2, x * 5 + 2] > 0:
                feats[y * 8 + x] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    pts = rs.anchors(feats, (8, 8), k=4)
    assert any(4 <= cx * W <= 32 and 6 <= cy * H <= 18 for cy, cx in pts)  # an anchor on the planted region
    boxes = rs.candidate_boxes(pts, (H, W), weight=rs.saliency_map(feats, (8, 8), (H, W)))

    def scorer(b):
        out = []
        for box in b.tolist():
            m = rs.box_mask(box, (H, W))
            out.append((m * planted).sum() / ((m + planted).clamp(max=1).sum()))
        return torch.stack(out)
    best, scores = rs.search(boxes, scorer)
    assert scores.shape == (boxes.shape[0],)
    m = rs.box_mask(best, (H, W))
    assert (m * planted).sum() / (m + planted).clamp(max=1).sum() > 0.6
    # least-salient anchors (op 'add') avoid the planted region
    assert all(not (planted[int(cy * H), int(cx * W)] > 0) for cy, cx in rs.anchors(feats, (8, 8), k=3, lowest=True))


def test_clip_scorer_weights(rs):
    """Score = 2 * text term + 1 * image term (sign -1 for 'add'), on a hand-made encoder."""
    img = torch.zeros(16, 16, 3)
    img[2:8, 2:8, 0] = 1.0  # a red square on black
    enc = lambda x: torch.stack([x[..., 0].mean((1, 2)), x[..., 1].mean((1, 2)) + 0.1], -1)
    boxes = torch.tensor([[2, 2, 8, 8], [9, 9, 15, 15]])
    s = rs.clip_scorer(img, enc, torch.tensor([1.0, 0.0]), "change", (16, 16))(boxes)
    crops, fills = rs.crops_and_fills(img, boxes, (16, 16))
    n = lambda v: torch.nn.functional.normalize(v, dim=-1)
    t = n(enc(crops))[:, 0]
    change = 1 - (n(enc(fills)) @ n(enc(img[None])).t())[:, 0]
    assert torch.allclose(s, 2 * t + change, atol=1e-5) and s[0] > s[1]
    s_add = rs.clip_scorer(img, enc, torch.tensor([1.0, 0.0]), "add", (16, 16))(boxes)
    assert torch.allclose(s_add, -s, atol=1e-6) and s_add[1] > s_add[0]


@pytest.fixture(scope="module")
def embedded_weights(pack, tmp_path_factory):
    """(domain CLIP path, predictor path): the shipped ones when they exist, else random ones written to tmp."""
    node_mod = pack("nodes.region_mask")
    dc = pack("embedded.domain_clip")
    clip_path, pred_path = node_mod._embedded_paths()
    d = tmp_path_factory.mktemp("rm")
    if not os.path.exists(clip_path):
        torch.manual_seed(0)
        clip_path = str(d / "clip.safetensors")
        dc.save(dc.DomainClip(), clip_path)
    if not os.path.exists(pred_path):
        rp = pack("latent_ops.region_predictor")
        torch.manual_seed(0)
        pred_path = str(d / "rp.safetensors")
        rp.save(rp.RegionPredictor(img_dim=dc.WIDTH, txt_dim=384, clip_dim=dc.EMBED), pred_path)
    original = node_mod._embedded_paths
    node_mod._embedded_paths = lambda: (clip_path, pred_path)
    yield clip_path, pred_path
    node_mod._embedded_paths = original


def test_node_through_executor(run, embedded_weights):
    prompt = {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1,
                                                        "color": 0xDC1E1E}},
        "rm": {"class_type": "AttentionEditLearnableRegionMask",
               "inputs": {"image": ["img", 0], "instruction": "make the red circle blue", "mode": "trained",
                          "threshold": 0.5}},
        "rs": {"class_type": "AttentionEditLearnableRegionMask",
               "inputs": {"image": ["img", 0], "instruction": "remove the square", "mode": "per-image search",
                          "threshold": 0.5}},
        "grow": {"class_type": "GrowMask", "inputs": {"mask": ["rs", 0], "expand": 1, "tapered_corners": True}},
    }
    out = run(prompt)
    mask, soft, over = out["rm"]
    assert mask.shape == soft.shape == (1, 48, 64) and over.shape == (1, 48, 64, 3)
    assert torch.equal(mask, (soft > 0.5).float())
    smask, ssoft, _ = out["rs"]
    assert smask.shape == (1, 48, 64) and smask.sum() > 0  # one box
    assert out["grow"][0].shape == (1, 48, 64)


def test_node_errors(pack, embedded_weights):
    node = pack("nodes.region_mask").LearnableRegionMask()
    img = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match="weights"):
        node.predict(img, "remove the square", "trained", 0.5, weights="/nonexistent.safetensors")
    with pytest.raises(ValueError, match="clip"):
        node.predict(img, "remove the square", "trained", 0.5, clip_vision=object())


def test_iou_benchmark_tiny(pack, embedded_weights, capsys):
    """A tiny run of benchmarks/region_mask_iou.py (1 scene per case): IoUs in [0, 1], printed."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "region_mask_iou", Path(__file__).resolve().parent.parent / "benchmarks" / "region_mask_iou.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rp = pack("latent_ops.region_predictor")
    enc = pack("embedded.domain_encoders").DomainEncoders(clip_path=embedded_weights[0])
    res = bench.evaluate(enc, rp.load(embedded_weights[1]), n=1, instructions=bench.INSTRUCTIONS[:3])
    vals = [v for by in res.values() for r in by.values() for v in r.values()]
    assert len(vals) == 3 * 2 * 2 and all(0.0 <= v <= 1.0 for v in vals)
    print(res)
    cases = pack("embedded.edit_cases").CASES[:2]
    rows = bench.evaluate_edit_cases(enc, rp.load(embedded_weights[1]), cases)
    assert [r[1] for r in rows] == [c.instruction for c in cases]
    assert all(set(r[2]) == {"trained", "per-image search"} and 0.0 <= min(r[2].values()) for r in rows)


def test_edit_case_instructions(pack, rs):
    """Every edit-benchmark case (fixed and generated) has a template instruction that parses to its kind of edit,
    naming the object that changes (the *_region_* benchmark methods predict their masks from it)."""
    cases = pack("embedded.edit_suite").benchmark_cases(2)
    ops = {"colour": "change", "shape": "change", "two_object": "change", "background": "background",
           "removal": "remove", "addition": "add"}
    for case in cases:
        parsed = rs.parse_instruction(case.instruction)
        assert parsed["op"] == ops[case.kind], (case.name, case.instruction)
        if parsed["op"] in ("change", "remove"):
            gone = [o for o in case.source["objects"] if o not in case.target["objects"]]
            assert len(gone) == 1 and parsed["source"].split()[-1] == gone[0]["shape"], (case.name, case.instruction)
        if parsed["op"] == "add":
            new = [o for o in case.target["objects"] if o not in case.source["objects"]]
            assert parsed["target"] == f"{new[0]['color']} {new[0]['shape']}", case.instruction
    assert pack("embedded.edit_cases").CASES[0].instruction == "make the red circle yellow"


class FakeVision:
    """CLIP_VISION stand-in: patch tokens = per-patch mean colour (class token first), image_embeds = mean colour.

    Like ComfyUI's ClipVisionModel.encode_image, crop=True centre-crops a non-square image before resizing."""
    image_size = 32

    def __init__(self, embed_dim=3):
        self.embed_dim = embed_dim

    def encode_image(self, image, crop=True):
        x = image.permute(0, 3, 1, 2)
        if crop:
            h, w = x.shape[2:]
            s = min(h, w)
            x = x[:, :, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear")
        patches = torch.nn.functional.avg_pool2d(x, 4).flatten(2).transpose(1, 2)  # [B, 64, 3]
        cls = patches.mean(1, keepdim=True)
        emb = x.mean((2, 3))
        emb = torch.cat([emb, torch.zeros(emb.shape[0], self.embed_dim - 3)], -1) if self.embed_dim > 3 else emb
        return {"penultimate_hidden_states": torch.cat([cls, patches], 1), "image_embeds": emb}


class FakeClip:
    """CLIP stand-in: tokens [1, 4, 5]; pooled = 'redness' direction [1, 0, 0]."""

    def tokenize(self, text):
        return {"l": [[(1, 1.0)] * 4]}

    def encode_from_tokens(self, tokens, return_pooled=False):
        cond = torch.ones(1, 4, 5)
        return (cond, torch.tensor([[1.0, 0.0, 0.0]])) if return_pooled else cond


def test_node_with_clip_vision_backbone(pack, embedded_weights):
    node = pack("nodes.region_mask").LearnableRegionMask()
    img = torch.zeros(1, 48, 48, 3)
    img[..., 2] = 0.8  # blue background
    img[0, 8:22, 26:40] = torch.tensor([0.9, 0.1, 0.1])  # red square
    mask, soft, over = node.predict(img, "remove the red square", "per-image search", 0.5,
                                    clip_vision=FakeVision(), clip=FakeClip())
    truth = torch.zeros(48, 48)
    truth[8:22, 26:40] = 1
    inter = (mask[0] * truth).sum()
    assert inter / (mask[0] + truth).clamp(max=1).sum() > 0.5
    with pytest.raises(ValueError, match="width"):
        node.predict(img, "remove the red square", "per-image search", 0.5, clip_vision=FakeVision(5),
                     clip=FakeClip())
    with pytest.raises(ValueError, match="trained on real image-caption pairs"):
        node.predict(img, "remove the red square", "trained", 0.5, clip_vision=FakeVision(), clip=FakeClip())


def test_clip_vision_grid_spans_a_wide_image(pack, embedded_weights):
    """A wide image whose object sits outside the centre square: the patch grid must cover the whole image (no
    centre crop), so the search finds the object where it is."""
    node = pack("nodes.region_mask").LearnableRegionMask()
    img = torch.zeros(1, 48, 144, 3)
    img[..., 2] = 0.8
    img[0, 12:30, 6:24] = torch.tensor([0.9, 0.1, 0.1])  # left of the centre 48x48 crop (x 48-96)
    mask, _, _ = node.predict(img, "remove the red square", "per-image search", 0.5,
                              clip_vision=FakeVision(), clip=FakeClip())
    assert mask.shape == (1, 48, 144)
    truth = torch.zeros(48, 144)
    truth[12:30, 6:24] = 1
    assert mask.sum() > 0 and (mask[0] * truth).sum() / mask.sum() > 0.6  # on the object (centre crop: 0.23)


def _tiny_init(module, seed=0):
    """ComfyUI's ops leave weights uninitialised: norms 1/0, other vectors 0, matrices N(0, 0.02)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif p.ndim == 1 and not name.endswith("class_embedding"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def test_node_with_comfyui_clip_vision_and_clip_g(comfy, pack, embedded_weights, tmp_path):
    """The real-checkpoint path with ComfyUI's own classes at a tiny size: ClipVisionModel (what CLIPVisionLoader
    returns for clip_vision_g.safetensors) and a CLIP-G text encoder (what CLIPLoader builds for a clip_g file with
    type stable_diffusion: SDXLRefinerClipModel, projected pooled output). Search mode runs and gives one box;
    trained mode stops with the clear backbone error."""
    import json
    import comfy.clip_vision
    import comfy.sd
    import comfy.sdxl_clip
    config = json.loads((Path(comfy.clip_vision.__file__).parent / "clip_vision_config_g.json").read_text())
    config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3, image_size=56,
                  projection_dim=32)
    (tmp_path / "vision.json").write_text(json.dumps(config))
    vision = comfy.clip_vision.ClipVisionModel(str(tmp_path / "vision.json"))
    _tiny_init(vision.model)

    class Target:
        params = {}
        clip = comfy.sdxl_clip.SDXLRefinerClipModel
        tokenizer = comfy.sdxl_clip.SDXLTokenizer
    text_config = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3)
    clip = comfy.sd.CLIP(Target, model_options={"clip_g_model_config": text_config})
    _tiny_init(clip.cond_stage_model, seed=1)
    _, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a cat"), return_pooled=True)
    assert pooled.shape == (1, 32) and torch.isfinite(pooled).all()

    node = pack("nodes.region_mask").LearnableRegionMask()
    img = torch.rand(1, 40, 72, 3)
    mask, soft, over = node.predict(img, "turn the cat into a dog", "per-image search", 0.5, clip_vision=vision,
                                    clip=clip)
    assert mask.shape == soft.shape == (1, 40, 72) and over.shape == (1, 40, 72, 3)
    rows, cols = mask[0].sum(1), mask[0].sum(0)
    assert mask.sum() > 0 and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum() == (rows > 0).sum() * (cols > 0).sum()  # one axis-aligned box
    with pytest.raises(ValueError, match="trained on real image-caption pairs"):
        node.predict(img, "turn the cat into a dog", "trained", 0.5, clip_vision=vision, clip=clip)


def test_training_templates_and_exact_masks(pack, rs):
    """Template instructions parse back to their op, and the edit mask is the changed object's exact mask."""
    import numpy as np
    trp = pack("embedded.train_region_predictor")
    ds = pack("embedded.dataset")
    rng = np.random.default_rng(0)
    kinds = {"colour": "change", "shape": "change", "remove": "remove", "add": "add", "background": "background"}
    seen = set()
    for _ in range(40):
        spec = ds.random_spec(rng, two_prob=0.5)
        ins, tgt, op = trp.make_edit(spec, rng)
        seen.add(op)
        assert rs.parse_instruction(ins)["op"] == kinds[op], ins
        mask = trp.edit_mask(spec, tgt, op, 32)
        _, sm = ds.render_scene(spec, 32)
        _, tm = ds.render_scene(tgt, 32)
        if op == "background":
            assert np.allclose(mask, 1 - np.clip(sm.sum(0), 0, 1))
        elif op == "remove":
            gone = [m for o, m in zip(spec["objects"], sm) if o not in tgt["objects"]]
            assert len(gone) == 1 and np.allclose(mask, gone[0])
        elif op == "add":
            new = [m for o, m in zip(tgt["objects"], tm) if o not in spec["objects"]]
            assert len(new) == 1 and np.allclose(mask, new[0])
    assert seen == set(kinds)
