"""One module per pipeline stage, each with one entry point ``run(cfg, layout) -> summary``.

The summary is what the stage's ``_SUCCESS`` marker records. :mod:`mak_ray.pipeline` decides which stages
run; a stage itself only reads its inputs and writes its outputs at the paths :mod:`mak_ray.layout` names.
"""
