"""Shared pytest set-up."""

import torch

# The tests use tiny models; one intra-op thread is faster for them than several, and
# avoids OpenMP threads spinning against other processes on small CI machines.
torch.set_num_threads(1)
