"""Offline logs and assets: schemas, readers, validation, leak-free splits, and the studio-world simulator.

The root of the dependency graph: it imports no other backdrop package.
"""
