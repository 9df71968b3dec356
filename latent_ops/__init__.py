"""Latent-space operations: inversion solvers, the multi-branch edit sampler, shifts, blends, masks, optimisers."""
