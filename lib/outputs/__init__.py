"""The paper's outputs: every figure, table and number, drawn from saved results only, and the registry that says
which function makes which file."""
