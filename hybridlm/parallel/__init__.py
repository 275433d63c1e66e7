"""Model parallelism applied to a built model, one file per form: the layout and mesh (mesh.py),
tensor (tensor.py), pipeline (pipeline.py), expert (expert.py) and context (context.py, ring.py) parallel,
and sharded checkpoints (checkpoint.py). Each file's docstring is its plan."""
