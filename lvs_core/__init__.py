"""lvs-audit core: latent attacks, the Latent Vulnerability Score and runs on TransformerLens."""

__version__ = "0.1.0"
