"""fusion: two-stream (RGB + optical flow) action recognition with convolutional fusion."""
__version__ = "0.1.0"
