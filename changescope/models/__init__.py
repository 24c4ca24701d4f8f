"""Models: backbones, change encoders, task heads, presets, and trivial baselines to compare against."""
