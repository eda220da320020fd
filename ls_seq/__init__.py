"""ls-seq: label smoothing you can see and measure."""

__version__ = "0.1.0"
