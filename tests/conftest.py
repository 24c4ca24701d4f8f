import torch

# Small tensors run faster on one thread, and the 2-core CI machine is not oversubscribed by pytest + torch.
torch.set_num_threads(1)
