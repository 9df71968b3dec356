"""A closed-form denoiser for Gaussian data, substituted through ComfyUI's unet function wrapper.

With x0 ~ N(mu, s^2) per element the exact posterior mean E[x0 | x, sigma] is known for both the eps/v
(x = x0 + sigma*eps) and the flow (x = (1-sigma)*x0 + sigma*n) parameterisations, so the probability-flow ODE
is exact and inversion round trips must converge as the step count grows.
"""
MU, S = 0.3, 0.7


class GaussianDenoiser:
    def __init__(self, flow):
        self.flow = flow

    def __call__(self, apply_model, args):
        x = args["input"]
        sigma = args["timestep"].view(-1, *[1] * (x.ndim - 1))
        if self.flow:
            a = 1 - sigma
            return MU + a * S ** 2 / (a ** 2 * S ** 2 + sigma ** 2) * (x - a * MU)
        return MU + S ** 2 / (S ** 2 + sigma ** 2) * (x - MU)

    def __deepcopy__(self, memo):
        return self


def gaussian_model(model, flow):
    clone = model.clone()
    clone.set_model_unet_function_wrapper(GaussianDenoiser(flow))
    return clone
