"""cnnbench: train and measure the "Modern CNNs" of Dive into Deep Learning on Fashion-MNIST."""
__version__ = "0.1.0"
