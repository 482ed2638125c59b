"""Metrics and evaluation protocols (PointM, mIoU, oIoU, Hit, proposal and oracle IoU).

Import the submodules directly: `refbench.metrics.protocols` and `refbench.metrics.table` (the
one table of metrics, their record fields and aggregation) are torch-free for `refbench list`;
`functional`, `scoring` and `records` use torch.
"""
