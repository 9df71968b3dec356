"""Dynamic loss scaling for gradients taken through a float16 model: small gradients would underflow to zero in
the model's float16 activations, so the loss is multiplied by a scale S before backward and the gradient divided
by S after; a gradient with inf/nan (S too large: float16 overflow) is replaced by zeros (that update is skipped)
and S halves; after `growth_interval` finite gradients in a row S doubles. Everything stays on the device (no
host synchronisation): the checks are tensor ops."""
import torch


class LossScaler:
    """grad(loss, x) with dynamic scaling; enabled=False: a plain autograd.grad (float32/bfloat16 models)."""

    def __init__(self, enabled=True, init_scale=2.0 ** 16, growth_interval=10):
        self.enabled, self.init_scale, self.growth_interval = enabled, float(init_scale), int(growth_interval)
        self.scale = self.good = None  # device tensors, made at the first gradient

    def grad(self, loss, x, retain=False):
        """d loss / d x (unscaled; zeros where the scaled backward overflowed), or None if x is not reached."""
        if not self.enabled:
            (g,) = torch.autograd.grad(loss, x, retain_graph=retain, allow_unused=True)
            return g
        if self.scale is None:
            self.scale = torch.full((), self.init_scale, device=loss.device)
            self.good = torch.zeros((), device=loss.device)
        (g,) = torch.autograd.grad(loss * self.scale.to(loss.dtype), x, retain_graph=retain, allow_unused=True)
        if g is None:
            return None
        bad = ~torch.isfinite(g).all()
        g = torch.where(bad, torch.zeros_like(g), g / self.scale.to(g.dtype))
        self._update(bad)
        return g

    def _update(self, bad):
        self.good = torch.where(bad, torch.zeros_like(self.good), self.good + 1)
        grow = self.good >= self.growth_interval
        self.scale = torch.where(bad, self.scale * 0.5, torch.where(grow, self.scale * 2.0, self.scale))
        self.good = torch.where(grow, torch.zeros_like(self.good), self.good)
