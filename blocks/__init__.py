"""torch.nn building blocks, one file per slot; importing this package registers them all."""

from blocks import activation, attention, head, init, kernel, kernel_cuda, mlp, norm, positional  # noqa: F401
