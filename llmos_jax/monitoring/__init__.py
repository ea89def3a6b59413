"""Monitoring for the training loop: model FLOPs and MFU, the peak FLOP/s
MFU is measured against, metrics files (JSONL + TensorBoard) and the progress bar.

Import the submodule you need (``flops``, ``peak_flops``, ``host_cpu``, ``metrics_writer``,
``progress``); this package imports nothing so that it stays cheap to load.
"""
