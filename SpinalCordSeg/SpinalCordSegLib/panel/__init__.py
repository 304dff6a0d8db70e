"""What the Slicer widget drives: the only sub-package that touches MRML.

The controller of the SpinalCordSeg panel (``segmentation_controller``), its
scene operations (``slicer_scene``), tracking of manual edits
(``edit_tracking``) and the model selector's choices (``model_selector``).
Plain Python: no ``qt``, no ``ctk``; ``slicer`` is imported where used.

May import: ``rounds`` and everything below it.
"""
