"""Metrics and evaluation protocols (PointM, mIoU, oIoU, Hit, proposal and oracle IoU).

Import the submodules directly: `refbench.metrics.protocols` is torch-free for `refbench list`;
`functional`, `scoring` and `accumulators` use torch.
"""
