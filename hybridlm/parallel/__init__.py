"""Model parallelism applied to a built model: the layout and mesh (mesh.py), tensor parallel
(tensor.py), pipeline parallel (pipeline.py), sharded checkpoints (checkpoint.py). Each file's
docstring is its plan."""
