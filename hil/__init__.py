"""pcm-hil experiments: mixed-precision training, run log, replay, command line."""
__version__ = "0.1.0"
