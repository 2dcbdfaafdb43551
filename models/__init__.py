"""Model families: one package per family, each exposing a ``HANDLER``."""
