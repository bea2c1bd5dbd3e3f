"""Models and their training: the study's networks (``models``) and recipe (``recipe``), the prediction benchmark's
model families (``task_models``), many small trainings at once (``many_models``) and teacher-student tasks
(``teacher``)."""
