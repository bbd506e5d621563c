"""Sub-commands of `pcm-hil`. Each module defines `register(subparsers)`; the CLI finds them."""
