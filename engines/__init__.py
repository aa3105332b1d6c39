"""dreamcam.engines: fast backends for the UNet and autoencoder (eager, compiled, TensorRT)."""
