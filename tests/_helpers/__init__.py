"""Tests that start several processes (torchrun, gloo, CPU), and the tiny models they share with in-process tests."""
