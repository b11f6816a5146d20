"""The studio world's seam: everything that reads ``offline_data.simulator`` on behalf of the library.

``requests`` (training and evaluation requests, hidden gold of composites), ``truth`` (the truth sidecar as the
reward evaluation and audit read it), ``audit_truth`` (the per-row truth an audit reads), ``prompts`` (the
canonical prompt vocabulary and training prompts of the shipped tiny base) and ``pretrain`` (pretraining that
base on rendered scenes). ``policy``, ``rollout`` and ``reward`` never import the simulator; they take what the
studio world provides as arguments.
"""
