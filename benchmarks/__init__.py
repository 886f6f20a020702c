"""Throughput, compile time, memory and MFU harness for resnet-jax and reference frameworks."""
