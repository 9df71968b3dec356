"""Mask-guided preservation (blended latent diffusion): after every step of a chosen range, the edited branches
keep the replayed source latent outside the mask, x <- m * x + (1 - m) * z_src(next sigma).

The mask is resized to the latent grid (area averaging: soft edge cells), optionally grown by whole latent cells
and feathered with a box blur; 1 keeps the edit, 0 takes the source. An all-ones mask changes nothing and an
all-zeros mask returns the source exactly (with steps up to the last).
"""

from .blend import broadcast_to_latent, resize_mask
from .latent_hooks import LatentHook
from .masks import as_mask, box_blur, check_shape, dilate

REFERENCE_KEY = "source_trajectory"  # run.store: the source latent at every sigma of the schedule


def latent_mask(mask, hw, batch, grow=0, feather=0, cell_threshold=0.0):
    """A ComfyUI MASK -> [batch, 1, h, w] on the latent grid, grown by `grow` cells and box-feathered by
    `feather` cells (only inward from the grown edge: the mask never shrinks below the grown hard mask).
    cell_threshold 0: a cell on the mask's edge keeps the share of it inside the mask (area average); above 0: a
    cell with more than that share inside is 1, the others 0."""
    m = resize_mask(mask, hw, batch)
    if cell_threshold > 0:
        m = (m > cell_threshold).to(m.dtype)
    m = dilate(m, grow)
    if feather > 0:
        soft = box_blur(m, feather)
        m = soft.maximum(m)
    return m.clamp(0, 1)


class PreserveHook(LatentHook):
    """Latent hook: blends every non-source branch towards run.store[REFERENCE_KEY][step + 1] outside the mask,
    after the steps start_step <= step <= end_step (end_step -1: the last step)."""
    technique = "Keep Outside Mask"

    def __init__(self, mask, start_step=0, end_step=-1, grow=0, feather=0, cell_threshold=0.0):
        as_mask(mask)
        if start_step < 0:
            raise ValueError("start_step must be 0 or more")
        if end_step != -1 and end_step < start_step:
            raise ValueError(f"end_step ({end_step}) must be -1 (the last step) or at least start_step ({start_step})")
        if grow < 0 or feather < 0:
            raise ValueError("grow and feather must be 0 or more")
        if not 0.0 <= cell_threshold < 1.0:
            raise ValueError(f"cell_threshold must lie in [0, 1), got {cell_threshold}")
        self.mask, self.start, self.end, self.grow, self.feather = mask, start_step, end_step, grow, feather
        self.cell_threshold = float(cell_threshold)
        self._cache = {}

    def active(self, step, total):
        end = total - 1 if self.end == -1 else self.end
        return self.start <= step <= end

    def blend_mask(self, x, per_branch):
        key = (tuple(x.shape[-2:]), per_branch, x.device, x.dtype)
        if key not in self._cache:
            hw = x.shape[-2:]
            check_shape(as_mask(self.mask), hw, "latent")
            m = broadcast_to_latent(latent_mask(self.mask, hw, per_branch, self.grow, self.feather,
                                                self.cell_threshold), x)
            self._cache = {key: m.to(device=x.device, dtype=x.dtype)}
        return self._cache[key]

    def after_step(self, run, x, step):
        trajectory = run.store.get(REFERENCE_KEY)
        if trajectory is None:
            raise ValueError("Keep Outside Mask: it acts only inside the Edit Sampler or FlowEdit (they hold the "
                             "source trajectory it blends with)")
        if not self.active(step, run.total_steps):
            return x
        n = run.per_branch
        m = self.blend_mask(x, n)
        ref = trajectory[step + 1].to(x)
        out = x.clone()
        for i, role in enumerate(run.branches):
            if role != "source":
                rows = slice(i * n, (i + 1) * n)
                out[rows] = m * x[rows] + (1 - m) * ref
        return out

    def __repr__(self):
        return (f"PreserveHook(steps {self.start}..{self.end}, grow {self.grow}, feather {self.feather}, "
                f"cell_threshold {self.cell_threshold})")
