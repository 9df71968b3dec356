"""The pack's embedded default: small models trained by the project on a procedural shapes domain."""
