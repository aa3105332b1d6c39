"""dreamcam.core: the StreamDiffusion algorithm and model loading (pure torch, knows no app)."""
