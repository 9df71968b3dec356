"""ODE steps in ComfyUI's sigma parameterisation, shared by inversion and editing.

ComfyUI models return the denoised estimate D(x, sigma). For eps/v models x = x0 + sigma*eps, for flow (CONST)
models x = (1 - sigma)*x0 + sigma*noise; in both, d = (x - D)/sigma is the ODE direction dx/dsigma, so one
Euler step in sigma is DDIM (eta 0) for eps/v models and the rectified-flow Euler step for flow models.
"""
import torch

SOLVERS = ("ddim", "euler", "rf_solver", "fireflow")
FLOW_SOLVERS = ("euler", "rf_solver", "fireflow")
NFE_PER_STEP = {"ddim": 1, "euler": 1, "rf_solver": 2, "fireflow": 1}
# Flow velocities are read as (x - D)/sigma; at sigma = 0 that is 0/0, so the first inversion step reads it here.
FLOW_SIGMA_FLOOR = 1e-3


def direction(x, denoised, sigma):
    return (x - denoised) / sigma


class Stepper:
    """Moves a latent from sigma_a to sigma_b with one solver. `model(x, sigma) -> denoised`.

    `hook(x, denoised, sigma, sigma_next)` may return a replacement for the denoised estimate at the main
    evaluation of each step (used by blends and optimisers).
    """

    def __init__(self, solver, flow):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}")
        if flow and solver == "ddim":
            raise ValueError("solver: ddim is for eps/v-prediction models; use euler, rf_solver or fireflow for flow models")
        if not flow and solver != "ddim":
            raise ValueError(f"solver: {solver} is for flow models; use ddim for eps/v-prediction models")
        self.solver, self.flow = solver, flow
        self.carry = None  # FireFlow: the previous step's midpoint direction
        self.last_direction = None  # exact inversion: the last fixed-point direction (the next step's first guess)

    def eval_sigma(self, a, b):
        """Where the model is evaluated for a step a -> b (DDIM inversion reads eps at the target level)."""
        if not self.flow and b > a:
            return b
        return max(a, FLOW_SIGMA_FLOOR) if self.flow else a

    def increment(self, model, x, a, b):
        """The direction d of a fresh forward step (sigma a > b): x_b = x + (b - a) * d (no carry, no hook)."""
        s = self.eval_sigma(a, b)
        d0 = direction(x, model(x, s), s)
        if self.solver in ("ddim", "euler"):
            return d0
        mid = max(a + (b - a) / 2, FLOW_SIGMA_FLOOR)
        x_mid = x + ((b - a) / 2) * d0
        return direction(x_mid, model(x_mid, mid), mid)

    def invert_step(self, model, x, a, b, iterations=0):
        """Inversion step x at sigma a -> sigma b > a.

        iterations 0: the explicit step (DDIM inversion reads the model at the point it starts from, not where the
        sampler will read it: the source of its reconstruction error). iterations k > 0: exact inversion as in
        AIDI / ReNoise: k fixed-point passes y <- x + (b - a) d(y), d the forward step's direction from y, so that
        the sampler's step from y lands back on x. On DDIM/Euler the first guess reuses the previous step's last
        direction (no extra evaluation), so a step costs k evaluations; 2nd-order solvers start from their explicit
        step.
        """
        if iterations == 0:
            return self.step(model, x, a, b)
        if self.solver in ("ddim", "euler") and self.last_direction is not None:
            y = x + (b - a) * self.last_direction
        else:  # the first step, and 2nd-order solvers: start from the explicit step
            y = self.step(model, x, a, b)
        for _ in range(iterations):
            d = self.increment(model, y, b, a)
            y = x + (b - a) * d
        self.last_direction = d
        return y

    def step(self, model, x, a, b, hook=None):
        """x at sigma a -> x at sigma b. The hook sees the evaluation whose direction makes the update."""
        s = self.eval_sigma(a, b)
        dt = b - a
        if self.solver in ("ddim", "euler"):
            den = model(x, s)
            if hook is not None:
                den = hook(x, den, s, b)
            return x + dt * direction(x, den, s)
        if self.solver == "fireflow" and self.carry is not None:
            d0 = self.carry
        else:
            d0 = direction(x, model(x, s), s)
        mid = max(a + dt / 2, FLOW_SIGMA_FLOOR)
        x_mid = x + (dt / 2) * d0
        den_mid = model(x_mid, mid)
        if hook is not None:
            den_mid = hook(x_mid, den_mid, mid, b)
        d_mid = direction(x_mid, den_mid, mid)
        self.carry = d_mid
        return x + dt * d_mid


def sigma_tensor(x, sigma):
    return torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
