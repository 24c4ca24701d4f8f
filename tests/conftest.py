import pytest
import torch

# Small tensors run faster on one thread, and the 2-core CI machine is not oversubscribed by pytest + torch.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """64 SynthChange pairs at 64 px (train / val / test), one copy per test module."""
    from changescope.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "s64"
    generate(root, pairs=64, size=64, seed=5)
    return root
