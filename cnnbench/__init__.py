"""cnnbench: train and measure the "Modern CNNs" of Dive into Deep Learning on Fashion-MNIST."""
import time as _time

__version__ = "0.1.0"
STARTED = _time.perf_counter()  # before torch and Hydra are imported: a run's start-up cost counts from here
