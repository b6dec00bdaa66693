"""An example third-party hvsim plugin (see README.md)."""
