"""The attention-control core: hook adapters, the uniform call context and composable controllers."""
