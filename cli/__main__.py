"""`python -m rwkv_edge.cli`: the same as the rwkv-export command."""

from .app import main

main()
